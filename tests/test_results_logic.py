"""Decisions over results (pure functions on hand-made frames): trial status, best epoch, best per family."""

import math

import pandas as pd

from search.runner import _best_row, best_per_family, trial_name, trial_status


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
