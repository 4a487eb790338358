"""Finishing a sweep per trial: a trial whose checkpoint cannot be scored is recorded with its error, and the
results table and the report are written all the same (issue 25)."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import run_sweep

from search.study.checkpoints import CHECKPOINT_MODEL
from search.study.experiment import TIMINGS_JSON, load_timings
from search.study.results import UNSCORED, best_row


def test_an_unreadable_checkpoint_costs_only_its_own_trial_and_resume_writes_results_and_report(
    classification_experiment, tmp_path
):
    source = classification_experiment
    storage = tmp_path / "runs"
    exp = Path(
        shutil.copytree(source, storage / "cls", ignore=shutil.ignore_patterns("report", "results.*", TIMINGS_JSON))
    )
    before = pd.read_csv(source / "results.csv")
    victim = best_row(before, "val_accuracy")  # the trial that was the winner
    checkpoint = exp / Path(victim["checkpoint"].removeprefix("file://")).relative_to(source)
    model = checkpoint / CHECKPOINT_MODEL
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a checkpoint cut short, as by a full disk
    storage.chmod(0o775)  # the group may write in the storage: resume says what that risks

    proc = run_sweep("resume", exp, faults={})  # the trainable the sweep ran (conftest's fault wrapper), no fault
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"the storage folder {storage} can be written by other users" in proc.stderr
    assert "`sweep resume` unpickles Ray Tune's state from it" in proc.stderr

    after = pd.read_csv(exp / "results.csv").set_index("trial")
    timings = load_timings(exp)  # the resuming driver's own phases, in order
    assert list(timings) == ["start_up", "trials", "test_scoring", "extras", "results"], timings
    assert all(s >= 0 for s in timings.values()) and timings["start_up"] > 0 and timings["test_scoring"] > 0
    assert sorted(after.index) == sorted(before["trial"])  # every trial, none trained again
    assert (after["epochs"] == before.set_index("trial")["epochs"]).all()
    bad = after.loc[victim["trial"]]
    assert bad["status"] == UNSCORED and np.isnan(bad["test_accuracy"]), bad.to_dict()
    assert CHECKPOINT_MODEL in bad["error"], bad.to_dict()  # the exception's own line, naming the file
    good = after.drop(victim["trial"])
    assert (good["status"] == "completed").all() and good["test_accuracy"].map(np.isfinite).all()

    # The winner is chosen among scored trials only, in the summary, the headline and the report.
    winner = good.index[0]
    assert f"winner (chosen on val_accuracy = {good.loc[winner, 'val_accuracy']:.4f}): {winner}" in proc.stdout
    report = (exp / "report" / "report.md").read_text()
    assert "## Trials whose test scoring failed" in report
    failed_section = report.split("## Trials whose test scoring failed")[1].split("## ")[0]
    assert victim["trial"] in failed_section and bad["error"][:40] in failed_section
    assert f"Best classifier per class (test split): {winner}" in report
