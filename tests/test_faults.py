"""Faults a cluster really has, on real parts. A node lost mid-trial on a two-node Ray cluster on this machine
(Ray's own ``ray.cluster_utils.Cluster``, loopback only): the sweep finishes and the trial continues from its last
checkpoint on the surviving node. And every bad input the README promises to refuse: exit code 2, one line that
names the problem and the fix, nothing written."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from conftest import FAULTY_SWEEP, tree_state

ROOT = Path(__file__).parent.parent


def _seg_spec(tmp_path, lrs, epochs, name="study.yaml") -> Path:
    spec = {
        "task": "segmentation",
        "space": {"model": ["unet"], "lr": lrs, "dropout": [0.1]},
        "train": {"batch_size": 8, "epochs": epochs, "base_filters": 4},
        "data": {"image_size": 32, "synthetic_counts": [6, 8, 8, 6], "synthetic_size": 32, "balance_to": None},
        "scheduler": {"grace_period": epochs, "reduction_factor": 2},  # no early stopping
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _attempts(folder: Path) -> list[dict]:
    path = folder / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _epochs(exp: Path, trial_id: str) -> list[int]:
    """The epochs a trial reported, in order, from its progress record on storage."""
    dirs = [d for d in exp.glob(f"*-{trial_id}") if (d / "result.json").is_file()]
    if not dirs:
        return []
    return [json.loads(line)["epoch"] for line in (dirs[0] / "result.json").read_text().splitlines()]


def test_lost_node_trial_continues_from_its_checkpoint_on_the_surviving_node(tmp_path):
    from ray.cluster_utils import Cluster

    epochs, storage, log = 5, tmp_path / "runs", tmp_path / "log"
    log.mkdir()
    fast_death = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}  # notice a lost node in ~3 s
    temp = tempfile.mkdtemp(prefix="/tmp/rayn-")  # short: Ray's socket paths must fit in 107 bytes
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "temp_dir": temp, "_system_config": fast_death},
    )
    driver = None
    try:
        worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        faults = {"log": str(log), "report_delay_s": 1.0}  # each epoch lasts at least a second: time to act
        study = _seg_spec(tmp_path, [0.01, 0.003], epochs)
        args = ["run", study, "--address", cluster.address, "--storage", storage, "--name", "nodes"]
        driver = subprocess.Popen(
            [sys.executable, str(FAULTY_SWEEP), *map(str, args)],
            env={**os.environ, "PYTHONPATH": str(ROOT), "SWEEP_TEST_FAULTS": json.dumps(faults)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        exp, victim, deadline = storage / "nodes", None, time.time() + 400
        while time.time() < deadline:  # a trial on the worker node with two epochs checkpointed
            assert driver.poll() is None, (worker.node_id, _attempts(log), driver.stdout.read()[-2000:])
            on_worker = [a for a in _attempts(log) if a["node"] == worker.node_id]
            if on_worker and len(_epochs(exp, on_worker[0]["trial_id"])) >= 2:
                victim = on_worker[0]["trial_id"]
                break
            time.sleep(0.2)
        assert victim, "no trial ran two epochs on the worker node in time"
        done_before = len(_epochs(exp, victim))
        cluster.remove_node(worker)  # the node and every process on it, mid-epoch
        out, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, out[-3000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    frame = pd.read_csv(exp / "results.csv")
    assert len(frame) == 2 and frame["trial_id"].is_unique  # every trial exactly once
    assert (frame["status"] == "completed").all() and (frame["epochs"] == epochs).all()
    retries = frame.set_index("trial_id")["retries"]
    assert retries[victim] == 1 and retries.drop(victim).eq(0).all()  # retried, not failed
    attempts = [a for a in _attempts(log) if a["trial_id"] == victim]
    assert len(attempts) == 2 and attempts[0]["node"] == worker.node_id != attempts[1]["node"]  # on the survivor
    assert attempts[1]["start_epoch"] >= done_before >= 2  # from its last checkpoint, not from epoch 0
    assert _epochs(exp, victim) == list(range(1, epochs + 1))  # every epoch recorded exactly once
    sweep = json.loads((exp / "sweep.json").read_text())
    assert sweep["cluster"]["nodes"] == ["127.0.0.1", "127.0.0.1"]


def _cli(capsys, *args) -> tuple[int, str]:
    """`sweep ARGS` in this process: (exit code, stderr)."""
    from search.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_every_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    from data_pipeline import DataConfig, prepare, synth
    from search.study.spec import load_study

    storage = tmp_path / "runs"

    def refused(*args, says: tuple[str, ...], untouched: Path | None = None, lines: int = 1) -> None:
        """Exit code 2, one line that names the problem and the fix, no traceback; nothing written under
        ``storage``; the user's folder exactly as it was."""
        before = {p: tree_state(p) for p in (storage, untouched) if p is not None and p.exists()}
        code, err = _cli(capsys, *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == lines and err.startswith("error: "), err
        assert "Traceback" not in err and all(words in err for words in says), (says, err)
        assert {p: tree_state(p) for p in before} == before and (storage.exists() == (storage in before)), err

    def run(study, *extra, **kw):
        refused("run", study, "--storage", storage, *extra, **kw)

    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [classification\nspace: {model: [unet]}\n")
    run(bad, says=("not valid YAML at line 2", "fix the file"))
    bad.write_text("- task: segmentation\n- space: {}\n")
    run(bad, says=("a study is a mapping", "not a list", "Writing a study"))
    bad.write_text("task: detection\nspace: {model: [unet], lr: [0.01]}\n")
    run(bad, says=("task: 'detection' must be one of classification, segmentation",))
    run("segmentation", "--preset", "smoke", "--set", "train.epochs", says=("--set takes section.key=value",))
    run("segmentation", "--preset", "smoke", "--set", "epochs=3", says=("e.g. train.epochs=5",))

    data = synth.write_dataset(tmp_path / "smears", (3, 3, 3, 3), size=32, seed=1)
    no_masks = tmp_path / "no-masks"
    shutil.copytree(data / "Original", no_masks / "Original")
    run("segmentation", "--preset", "smoke", "--data-dir", no_masks, says=("Segmented is missing",), untouched=no_masks)

    # Corrupt files: asked to, they stop the sweep before it starts, naming each file and the fix in one line;
    # by default the pair is left out, counted and listed (sweep.json holds this summary).
    image = sorted((data / "Original").rglob("*.*"))[0]
    mask = sorted((data / "Segmented").rglob("*.*"))[-1]
    image.write_bytes(image.read_bytes()[:40])  # a truncated image
    mask.write_bytes(b"not a png at all")  # a corrupt mask
    strict = ("--preset", "smoke", "--data-dir", data, "--set", "data.on_bad_image=fail")
    says = ("2 unreadable", image.name, mask.name, "on_bad_image: skip")
    run("segmentation", *strict, says=says, untouched=data)
    cfg = DataConfig(task="segmentation", data_dir=str(data), image_size=32, balance_to=None)
    skipped = [name for name, _ in prepare(cfg).summary()["skipped"]]
    assert len(skipped) == 2 and image.name in " ".join(skipped) and mask.stem in " ".join(skipped), skipped
    run("segmentation", *strict, says=says, untouched=data)  # still refused once the skip is cached

    # An experiment name that is taken; a folder with no Ray Tune state to resume.
    taken = storage / "taken"
    taken.mkdir(parents=True)
    study = load_study("segmentation", "smoke")
    (taken / "sweep.json").write_text(json.dumps({"study": study.to_dict(), "resources": {}}, default=str))
    run("segmentation", "--preset", "smoke", "--name", "taken", says=("exists already", "pick another --name"))
    refused("resume", taken, says=("no Ray Tune state", "sweep run"))


def test_a_failed_trial_keeps_its_exception_line_not_the_notes_after_it():
    from search.study.results import error_line

    jax_oom = RuntimeError(  # as Ray Tune hands back a JAX trial that ran out of memory (abridged)
        "Failure # 1 (occurred at 2026-11-23_04-04-10)\n"
        "ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1, actor_id=ab, repr=func)\n"
        '  File "jax/_src/dispatch.py", line 90, in apply_primitive\n'
        "    config.disable_jit.set_local(prev)\n"
        "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 8589934592 bytes.\n"
        "--------------------\n"
        "For simplicity, JAX has removed its internal frames from the traceback of the following exception.\n"
    )
    assert (
        error_line(jax_oom)
        == "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 8589934592 bytes."
    )
    wrapped = RuntimeError(
        "ray.exceptions.RayTaskError(RuntimeError): ray::train()\nRuntimeError: injected failure 2 of 2"
    )
    assert error_line(wrapped) == "RuntimeError: injected failure 2 of 2"
    assert error_line(ValueError("a message alone")) == "a message alone" and error_line(None) == ""


def test_a_sweep_stopped_with_ctrl_c_says_how_to_resume_and_resume_finishes_it(tmp_path):
    """Ctrl-C (SIGINT to the driver) while trials run (on 2 cores, two run and one waits): Ray Tune stops and keeps
    its state, and the driver exits 130 with one line that names `sweep resume`, not a traceback from scoring trials
    that never started (what the GPU run of the 48-trial study showed). That resume then finishes every trial."""
    import signal

    storage, log = tmp_path / "runs", tmp_path / "log"
    log.mkdir()
    faults = {"log": str(log), "report_delay_s": 1.0}
    study = _seg_spec(tmp_path, [0.01, 0.003, 0.001], 3)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SWEEP_TEST_FAULTS": json.dumps(faults)}
    args = ["run", study, "--storage", storage, "--name", "stopped"]
    driver = subprocess.Popen(
        [sys.executable, str(FAULTY_SWEEP), *map(str, args)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    exp, deadline = storage / "stopped", time.time() + 300
    try:
        while not any(_epochs(exp, a["trial_id"]) for a in _attempts(log)):  # a trial has reported, none has ended
            assert driver.poll() is None and time.time() < deadline, driver.communicate()[1][-2000:]
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted with ") and f"`sweep resume {exp}`" in last, last
    assert not (exp / "results.csv").exists()

    resumed = subprocess.run(
        [sys.executable, str(FAULTY_SWEEP), "resume", str(exp)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    frame = pd.read_csv(exp / "results.csv")
    assert len(frame) == 3 and (frame["status"] == "completed").all() and (frame["epochs"] == 3).all()


def test_a_sweep_has_ended_when_every_trial_is_terminated_or_errored():
    from search.sweep.runner import unended

    assert unended(["TERMINATED", "ERROR", "TERMINATED"]) == 0
    assert unended(["TERMINATED", "RUNNING", "PENDING", "PAUSED", "ERROR"]) == 3


def test_resume_retries_a_trial_that_errored_and_keeps_the_one_that_finished(tmp_path):
    """A trial that fails on every attempt Ray allows (max_failures 1: two attempts, test-only faults) ends ERRORED;
    the sweep still finishes and scores the other trial. `sweep resume` retries the errored trial (its third attempt,
    which the fault lets through) and trains nothing else again: the results then hold both, completed."""
    from conftest import run_sweep

    log = tmp_path / "log"
    log.mkdir()
    faults = {"log": str(log), "raise": {"0.003": 2}}
    study = _seg_spec(tmp_path, [0.01, 0.003], 1)
    first = run_sweep("run", study, "--storage", tmp_path / "runs", "--name", "e", faults=faults)
    assert first.returncode == 0, first.stderr[-3000:]
    exp = tmp_path / "runs" / "e"
    before = pd.read_csv(exp / "results.csv").set_index("lr")
    assert before.loc[0.003, "status"] == "failed" and before.loc[0.01, "status"] == "completed", before
    assert [a["lr"] for a in _attempts(log)].count(0.003) == 2

    resumed = run_sweep("resume", exp, faults=faults)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = pd.read_csv(exp / "results.csv").set_index("lr")
    assert (after["status"] == "completed").all() and (after["epochs"] == 1).all(), after
    attempts = [a["lr"] for a in _attempts(log)]
    assert attempts.count(0.003) == 3 and attempts.count(0.01) == 1  # the finished trial did not train again
    assert after.loc[0.01, "val_dice"] == before.loc[0.01, "val_dice"]
