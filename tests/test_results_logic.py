"""Decisions over results (pure functions on hand-made frames): trial status, best epoch, best per family."""

import math
from pathlib import Path

import pandas as pd
import pytest

from search.runner import SweepError, _best_row, best_per_family, trial_name, trial_status


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
    assert _best_row(history, "val_dice")["epoch"] == 2
    assert _best_row(pd.DataFrame(), "val_dice") == {}


def test_best_per_family_uses_validation_not_test():
    frame = pd.DataFrame(
        {
            "model": ["unet", "unet", "unet_fpn"],
            "val_dice": [0.7, 0.8, 0.6],
            "test_dice": [0.95, 0.5, 0.9],
        }
    )
    best = best_per_family(frame, "val_dice")
    assert best["model"].tolist() == ["unet", "unet_fpn"] and best["val_dice"].tolist() == [0.8, 0.6]


def test_trial_names_say_model_option_lr_dropout():
    assert (
        trial_name({"model": "nasnet_large", "option": 2, "lr": 0.0001, "dropout": 0.4})
        == "nasnet_large-opt2-lr0.0001-do0.4"
    )
    assert trial_name({"model": "unet", "lr": 0.01, "dropout": 0.0}) == "unet-lr0.01-do0"


def test_gpu_share_limits_framework_memory():
    from search.trial import limit_gpu_memory

    quarter = limit_gpu_memory("jax", 0.25)
    assert quarter["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225" and quarter["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert quarter["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in limit_gpu_memory("jax", 1.0)  # a whole GPU: no cap needed


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
    from search.export import select_best, selection_metric

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
    from search.jobs import entrypoint

    builtin = entrypoint(["classification", "--preset", "smoke", "--set", "train.epochs=5"], "s3://b/sweeps")
    assert builtin == (
        "python -m search run classification --preset smoke --set train.epochs=5 --address auto --storage s3://b/sweeps"
    )
    from_file = entrypoint(["/home/me/my study.yaml", "--seed", "3"], "~/runs", study_file="/home/me/my study.yaml")
    assert from_file.startswith('d=$(mktemp -d) && printf "%s" "$SWEEP_STUDY_YAML" > "$d/my study.yaml" && ')
    assert from_file.endswith("python -m search run \"$d/my study.yaml\" --seed 3 --address auto --storage '~/runs'")


def test_checkpoint_locations_keep_their_storage_scheme():
    from search.runner import checkpoint_location

    assert checkpoint_location("/r/e/t/checkpoint_000001", "/r/e") == "/r/e/t/checkpoint_000001"
    assert checkpoint_location("bucket/e/t/checkpoint_000001", "s3://bucket/e") == "s3://bucket/e/t/checkpoint_000001"
    assert checkpoint_location("/r/e/t/checkpoint_000001", "file:///r/e") == "file:///r/e/t/checkpoint_000001"


def test_prediction_file_names_stay_unique():
    from search.export import _output_names

    names = _output_names([Path("a/x.png"), Path("b/x.jpg"), Path("b/y.png")])
    assert names == ["x-0", "x-1", "y"]
