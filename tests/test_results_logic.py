"""Decisions over results (pure functions on hand-made frames): trial status, best epoch, best per family."""

import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from search.errors import SweepError
from search.study.results import UNSCORED, best_by, best_epoch, best_row, trial_name, trial_status


def test_trial_status():
    assert trial_status(True, {"epoch": 3}, 3) == "failed"
    assert trial_status(False, {"epoch": 2, "diverged": True}, 3) == "diverged"
    assert trial_status(False, {"epoch": 3}, 3) == "completed"
    assert trial_status(False, {"epoch": 1}, 3) == "stopped"


def test_best_row_is_chosen_on_validation_and_skips_diverged_epochs():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "val_dice": [0.5, 0.8, 0.7, 0.9],
            "train_loss": [1.0, 0.5, 0.4, math.nan],
            "diverged": [False, False, False, True],
            "test_dice": [0.0, 0.1, 0.99, 0.0],  # never looked at
        }
    )
    assert best_epoch(history, "val_dice")["epoch"] == 2
    assert best_epoch(pd.DataFrame(), "val_dice") == {}


def test_best_per_family_uses_validation_not_test():
    frame = pd.DataFrame(
        {
            "model": ["unet", "unet", "unet_fpn"],
            "val_dice": [0.7, 0.8, 0.6],
            "test_dice": [0.95, 0.5, 0.9],
        }
    )
    best = best_by(frame, "val_dice", "max", by="model")
    assert best["model"].tolist() == ["unet", "unet_fpn"] and best["val_dice"].tolist() == [0.8, 0.6]


def test_trial_names_say_model_option_lr_dropout():
    assert (
        trial_name({"model": "nasnet_large", "option": 2, "lr": 0.0001, "dropout": 0.4})
        == "nasnet_large-opt2-lr0.0001-do0.4"
    )
    assert trial_name({"model": "unet", "lr": 0.01, "dropout": 0.0}) == "unet-lr0.01-do0"


def test_gpu_share_limits_framework_memory():
    from search.sweep.trial import limit_gpu_memory

    quarter = limit_gpu_memory(0.25)
    assert quarter["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225" and quarter["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert quarter["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in limit_gpu_memory(1.0)  # a whole GPU: no cap needed


def _results():
    return pd.DataFrame(
        {
            "trial": ["a", "b", "c", "d"],
            "model": ["unet", "unet", "unet_fpn", "unet_fpn"],
            "val_dice": [0.5, 0.7, 0.9, float("nan")],
            "val_loss": [0.4, 0.3, 0.35, float("nan")],
            "test_dice": [0.99, 0.1, 0.2, 0.3],
            "checkpoint": ["/c/a", "/c/b", "", ""],  # c diverged before its first checkpoint
        }
    )


def test_export_selects_on_validation_among_trials_with_a_checkpoint():
    from search.outputs.export import select_best, selection_metric

    frame = _results()
    assert selection_metric("segmentation", None) == ("val_dice", "max")
    assert selection_metric("classification", "val_loss") == ("val_loss", "min")
    with pytest.raises(SweepError, match="validation metrics only"):
        selection_metric("segmentation", "test_dice")
    assert select_best(frame, "val_dice", "max")["trial"] == "b"  # c scores higher but left no checkpoint
    assert select_best(frame, "val_loss", "min")["trial"] == "b"
    assert select_best(frame, "val_dice", "max", family="unet")["trial"] == "b"
    with pytest.raises(SweepError, match="nothing to export"):
        select_best(frame, "val_dice", "max", family="unet_fpn")
    with pytest.raises(SweepError, match="no trial of model family 'unet_gelu'"):
        select_best(frame, "val_dice", "max", family="unet_gelu")
    with pytest.raises(SweepError, match="validation metrics: val_dice, val_loss"):
        select_best(frame, "val_iou", "max")


def test_job_entrypoint_is_the_local_command_joining_the_cluster():
    from search.cluster.jobs import entrypoint

    builtin = entrypoint(["classification", "--preset", "smoke", "--set", "train.epochs=5"], "s3://b/sweeps")
    assert builtin == (
        "python -m search run classification --preset smoke --set train.epochs=5 --address auto --storage s3://b/sweeps"
    )


@pytest.mark.parametrize("name", ["my study.yaml", "x$(touch ran)`touch ran`\"'; touch ran #.yaml"])
def test_job_entrypoint_writes_the_study_file_under_its_own_name_and_runs_nothing_in_it(tmp_path, name):
    """The job's command run by bash, with `python` standing in as a function that prints its arguments: the study
    is written under its literal name, and nothing in the name is executed."""
    from search.cluster.jobs import entrypoint

    command = entrypoint([f"/home/me/{name}", "--seed", "3"], "~/runs", study_file=f"/home/me/{name}")
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), "SWEEP_STUDY_YAML": "task: segmentation\n"}
    shown = subprocess.run(
        ["bash", "-c", 'python() { printf "%s\\n" "$@"; }; ' + command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    args = shown.stdout.splitlines()
    study = Path(args[3])
    assert args[:3] + args[4:] == ["-m", "search", "run", "--seed", "3", "--address", "auto", "--storage", "~/runs"]
    assert study.name == name and study.parent.parent == tmp_path  # in the fresh folder, under its own name
    assert study.read_text() == "task: segmentation\n"
    assert list(tmp_path.iterdir()) == [study.parent]  # nothing else made: no `ran`


def test_checkpoint_locations_keep_their_storage_scheme():
    from search.sweep.runner import checkpoint_location

    assert checkpoint_location("/r/e/t/checkpoint_000001", "/r/e") == "/r/e/t/checkpoint_000001"
    assert checkpoint_location("bucket/e/t/checkpoint_000001", "s3://bucket/e") == "s3://bucket/e/t/checkpoint_000001"
    assert checkpoint_location("/r/e/t/checkpoint_000001", "file:///r/e") == "file:///r/e/t/checkpoint_000001"


def test_prediction_file_names_follow_the_inputs_paths_and_stay_unique():
    from search.outputs.export import output_names

    # the old rule (stem, then a running number) gave x-0, x-1 and also x-1 to an image named x-1
    assert output_names([Path("a/x.png"), Path("b/x.jpg"), Path("b/x-1.png")]) == ["a/x", "b/x", "b/x-1"]
    assert output_names([Path("d/a.png"), Path("d/a.jpg"), Path("d/b.png")]) == ["a_png", "a_jpg", "b"]
    assert output_names([Path("d/sub/a.png")]) == ["a"]
    assert output_names([Path("d/a.png"), Path("d/sub/a.png")]) == ["a", "sub/a"]


def test_best_by_ranks_by_mode_skips_missing_values_and_keeps_one_row_per_group():
    frame = pd.DataFrame(
        {
            "model": ["unet", "unet", "unet_fpn", "unet_fpn"],
            "val_loss": [0.3, 0.2, math.nan, 0.25],
            "val_dice": [0.7, 0.8, 0.9, 0.6],
        }
    )
    assert best_by(frame, "val_dice")["val_dice"].tolist() == [0.9, 0.8, 0.7, 0.6]
    assert best_by(frame, "val_loss", "min")["val_loss"].tolist() == [0.2, 0.25, 0.3]  # NaN left out
    per_model = best_by(frame, "val_loss", "min", by="model")
    assert per_model["model"].tolist() == ["unet", "unet_fpn"] and per_model.index.tolist() == [1, 3]
    assert best_by(frame, "val_iou").empty  # a metric the frame lacks: nothing to choose
    with pytest.raises(ValueError, match="mode must be"):
        best_by(frame, "val_dice", "maximum")


def test_a_trial_whose_scoring_failed_is_never_the_best_whatever_its_validation_metric():
    frame = pd.DataFrame(
        {
            "model": ["unet", "unet", "unet_fpn"],
            "status": [UNSCORED, "completed", UNSCORED],
            "val_dice": [0.9, 0.7, 0.95],
        }
    )
    assert best_by(frame, "val_dice").index.tolist() == [1]
    assert best_by(frame, "val_dice", by="model")["model"].tolist() == ["unet"]  # unet_fpn: nothing to choose
    assert best_row(frame[frame["status"] == UNSCORED], "val_dice") is None


def test_one_label_and_one_folder_name_per_configuration():
    from search.study.experiment import trial_dir
    from search.study.results import config_label, trial_dirname

    row = {"model": "resnet50", "option": 2.0, "lr": 0.001, "dropout": 0.2, "optimizer": "adam", "batch_size": 16}
    assert config_label(row) == "resnet50 option 2, lr 0.001, dropout 0.2, optimizer adam, batch size 16"
    assert config_label({"model": "unet", "lr": 0.01, "dropout": 0.0, "option": math.nan}) == "unet, lr 0.01, dropout 0"
    assert trial_dirname("unet-lr0.01-do0", "ab12") == "unet-lr0.01-do0-ab12"
    assert trial_dir("/e", {"trial": "unet-lr0.01-do0", "trial_id": "ab12"}) == "/e/unet-lr0.01-do0-ab12"
    assert trial_dir("/e", {"trial": "unet-lr0.01-do0", "trial_id": math.nan}) is None  # never reported


def test_task_table_is_the_one_source_of_task_facts():
    import dataclasses

    import models
    from data_pipeline.layout import TASKS as DATA_TASKS
    from data_pipeline.layout import has_masks
    from models.metrics import get_loss
    from models.tasks import TASK_TABLE, TASKS, task_info
    from search.study.spec import Train

    assert set(DATA_TASKS) == set(TASKS)  # the data pipeline reads masks by the same task names
    assert all(has_masks(name) == info.masks for name, info in TASK_TABLE.items())  # and reads them for the same
    for info in TASK_TABLE.values():
        assert info.metric.startswith("val_") and info.mode in ("max", "min")
        assert info.default_loss in info.losses
        for loss in info.losses:
            get_loss(loss)  # every loss a study may name exists
    with pytest.raises(ValueError, match="task must be one of classification, segmentation"):
        task_info("detection")
    # What a trial passes a model comes from its registry entry: every hyperparameter is a train setting.
    settings = {f.name for f in dataclasses.fields(Train)} | {"dropout"}
    for name in models.list_models():
        assert set(models.get(name).hyperparameters) <= settings, name
        info = models.get(name)
        assert (info.backbone is not None) == ("freeze_backbone" in info.hyperparameters), name


def test_a_recorded_study_is_validated_again_when_it_is_read(tmp_path):
    import json

    from search.study.experiment import SWEEP_FILE, load_study
    from search.study.spec import SpecError, study_from_record
    from search.study.spec import load_study as load_spec

    study = load_spec("classification", "smoke", {"train": {"weights": None}})
    assert study_from_record(study.to_dict()) == study  # the round trip is exact
    (tmp_path / SWEEP_FILE).write_text(json.dumps({"study": study.to_dict()}))
    assert load_study(tmp_path) == study
    broken = study.to_dict()
    broken["train"]["epochs"], broken["space"]["dropout"] = 0, [1.5]
    (tmp_path / SWEEP_FILE).write_text(json.dumps({"study": broken}))
    with pytest.raises(SpecError) as err:
        load_study(tmp_path)
    assert f"{tmp_path}/{SWEEP_FILE}" in str(err.value) and "train.epochs" in str(err.value)
    assert "space.dropout" in str(err.value)  # every bad field named together
    # What only matters for training on this machine is checked when resuming, not when reading results.
    gone = {**study.to_dict(), "data": {**study.to_dict()["data"], "data_dir": str(tmp_path / "moved")}}
    assert study_from_record(gone).data.data_dir == str(tmp_path / "moved")
    with pytest.raises(SpecError, match=r"data\.data_dir"):
        study_from_record(gone, here=True)


def test_every_searchable_train_setting_has_a_label_in_trial_names():
    from models.tasks import TASK_TABLE
    from search.study.axes import AXES, EXTRA_AXES

    assert set(EXTRA_AXES) == {axis for info in TASK_TABLE.values() for axis in info.train_axes}
    for info in TASK_TABLE.values():  # a task's axes are the axis table's, its train axes those that are settings
        assert set(info.axes) <= set(AXES), info.name
        assert info.train_axes == tuple(a for a in info.axes if AXES[a].train), info.name


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "a\\b", "..", ".hidden", "s3:x", "a\nb"])
def test_an_experiment_name_is_one_folder_inside_its_storage(tmp_path, capsys, name):
    from search.cli import main

    storage = tmp_path / "runs"
    assert main(["run", "classification", "--preset", "smoke", "--storage", str(storage), "--name", name]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a folder name" in err
    assert list(tmp_path.iterdir()) == []  # nothing written: no storage folder, no experiment


def test_a_plain_experiment_name_is_kept():
    from search.study.experiment import check_name

    assert check_name("leukemia-2026.v1_a") == "leukemia-2026.v1_a"


def test_a_driver_refused_by_a_cluster_is_told_what_to_do():
    """Ray's own words when a driver cannot join (as it raises them: a ConnectionError from the GCS client's error),
    turned into what to do, by whether the cluster asked for a token and whether this machine sent one."""
    from search.cluster.connect import join_refused

    def refusal(last_line: str) -> ConnectionError:
        exc = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
        exc.__cause__ = RuntimeError(f"Failed to connect to GCS. Last connection error: Traceback ...\n{last_line}\n")
        return exc

    auth = refusal(
        "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or "
        "incorrect. Ensure that the token for the cluster is available in a local file"
    )
    unset = join_refused("10.0.0.1:6379", auth, None)
    assert unset.startswith("cannot join the Ray cluster at 10.0.0.1:6379 (RPC error: InvalidAuthToken: ")
    assert "`export RAY_AUTH_MODE=token`" in unset and "\n" not in unset
    assert "is not the cluster's" in join_refused("10.0.0.1:6379", auth, "token")
    silent = join_refused("10.0.0.1:6379", refusal("TimeoutError: timed out"), None)
    assert "ray status" in silent and "RAY_AUTH_MODE" not in silent


def _candidates():
    """Four trials of three architectures; the best of each has a measured cost (as a finished sweep records it)."""
    frame = pd.DataFrame(
        {
            "trial": ["small-a", "small-b", "mid", "big"],
            "model": ["small", "small", "mid", "big"],
            "val_accuracy": [0.70, 0.60, 0.65, 0.90],
            "checkpoint": ["c0", "c1", "c2", "c3"],
        }
    )
    cost = {"small-a": (2.0, 5.0), "mid": (8.0, 20.0), "big": (30.0, 80.0)}  # (ms, MiB)
    frame["latency_ms"] = frame["trial"].map(lambda t: cost.get(t, (math.nan,))[0])
    frame["size_mb"] = frame["trial"].map(lambda t: cost.get(t, (0, math.nan))[1])
    return frame


def test_costs_are_measured_for_each_architectures_best_and_the_front_drops_what_is_slower_and_worse():
    from search.study.results import architecture, cost_candidates, measured_candidates, pareto_front

    frame = _candidates().drop(columns=["latency_ms", "size_mb"])
    frame["dense_units"] = [64, 128, 64, 64]  # small-b is another architecture of its model: a candidate of its own
    assert sorted(cost_candidates(frame, "val_accuracy")["trial"]) == ["big", "mid", "small-a", "small-b"]
    frame.loc[3, "checkpoint"] = None  # a trial without a checkpoint cannot be run, so is not timed
    assert "big" not in set(cost_candidates(frame, "val_accuracy")["trial"])
    # Trials that say their architecture: an axis their model does not take (dense_units for "small" here) no
    # longer splits it in two; a model that takes it (mid, 32 against 64 units) is two architectures.
    said = _candidates().assign(dense_units=[64, 128, 32, 64], model=["small", "small", "mid", "mid"])
    said["architecture"] = [architecture("small", {}), architecture("small", {}), *map(
        lambda u: architecture("mid", {"dense_units": u, "dropout": 0.2}), (32, 64))]  # fmt: skip
    assert list(said["architecture"][2:]) == ["mid(dense_units=32)", "mid(dense_units=64)"]
    assert sorted(cost_candidates(said, "val_accuracy")["trial"]) == ["big", "mid", "small-a"]
    assert sorted(measured_candidates(said, "val_accuracy")["trial"]) == ["big", "mid", "small-a"]

    front = pareto_front(_candidates(), "val_accuracy", "max")
    assert list(front["trial"]) == ["small-a", "big"]  # mid: slower than small-a and worse; fastest first
    losses = _candidates().assign(val_loss=[0.3, 0.4, 0.2, 0.1])  # lower is better: mid now beats small-a
    assert list(pareto_front(losses, "val_loss", "min")["trial"]) == ["small-a", "mid", "big"]


def test_a_budget_picks_the_best_that_fits_and_names_the_fastest_when_none_does():
    from search.outputs.export import select_within_budget
    from search.study.results import within_budget

    frame = _candidates()
    best, fastest = within_budget(frame, "val_accuracy", "max", max_latency_ms=10)
    assert best["trial"] == "small-a" and fastest["trial"] == "small-a"  # mid fits too, but is worse
    assert within_budget(frame, "val_accuracy", "max", max_latency_ms=30)[0]["trial"] == "big"  # at the line: fits
    assert within_budget(frame, "val_accuracy", "max", max_latency_ms=100, max_size_mb=50)[0]["trial"] == "small-a"
    assert within_budget(frame, "val_accuracy", "max", max_latency_ms=1)[0] is None

    with pytest.raises(SweepError) as none_fits:
        select_within_budget(frame, "val_accuracy", "max", None, 1.5, None)
    said = str(none_fits.value)
    assert "no trial fits --max-latency-ms 1.5" in said and "fastest candidate is small-a at 2 ms" in said
    assert "5 MiB" in said
    assert select_within_budget(frame, "val_accuracy", "max", "mid", 100, None)["trial"] == "mid"  # that family
    with pytest.raises(SweepError, match="--metric val_dice is not in this sweep's results"):
        select_within_budget(frame, "val_dice", "max", None, 100, None)
    with pytest.raises(SweepError, match="no trial of model family 'tiny'"):
        select_within_budget(frame, "val_accuracy", "max", "tiny", 100, None)
    with pytest.raises(SweepError, match="--max-size-mb 10: no trial of this sweep has a measured cost"):
        select_within_budget(frame.drop(columns=["latency_ms", "size_mb"]), "val_accuracy", "max", None, None, 10)
