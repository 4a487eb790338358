"""What a trial writes into each epoch's checkpoint, and how it comes back.

Every epoch reports a checkpoint, so a trial resumed after a crash, a killed driver or a lost node continues from its
last completed epoch. Ray Tune keeps two per trial (``CheckpointConfig(num_to_keep=1)`` keeps the best by
``SCORE`` and always the latest):

- an epoch that improved the validation metric: the whole model (``model.keras``, compiled, optimizer included),
  the one the results, the report and `sweep export` use;
- any other epoch: the whole model too, except for a classifier on a frozen pretrained backbone, which never
  changes and is rebuilt identically from its weights file: there the head's weights and the optimizer's state
  (``head.npz``) are enough, a few MB instead of the backbone's hundreds.

``state.json`` beside either holds the epoch, the best validation value so far and, for a head checkpoint, the
backbone's digest: a rebuilt backbone that differs is an error, never a silent mix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_MODEL = "model.keras"
CHECKPOINT_HEAD = "head.npz"
CHECKPOINT_STATE = "state.json"
SCORE = "checkpoint_score"  # what Ray ranks checkpoints by: the validation metric where it improved, else -inf


def head_suffices(info, train, epochs_done: int) -> bool:
    """Whether the checkpoint after ``epochs_done`` epochs may hold the head alone: model ``info`` (its registry
    entry) has a backbone that is pretrained (a weights file rebuilds it exactly; a random one may not be rebuilt
    alike in a reused worker), frozen, and not yet in the fine-tuning stage (after ``fine_tune_after`` epochs).
    ``train``: the trial's ``spec.Train``."""
    fine_tuning = train.fine_tune_layers > 0 and epochs_done > train.fine_tune_after
    frozen = train.freeze_backbone and not fine_tuning
    return info.backbone is not None and train.weights is not None and frozen


def write(folder: Path, model, state: dict[str, Any], *, whole: bool, info=None) -> None:
    """Write one checkpoint into ``folder``: the whole model, or (``whole=False``) the head and optimizer state of
    model ``info`` (its registry entry, whose backbone facts say what the head is)."""
    if whole:
        model.save(folder / CHECKPOINT_MODEL)
    else:
        head = {f"w{i}": np.asarray(w.numpy()) for i, w in enumerate(info.backbone.head_weights(model))}
        opt = {f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)}
        np.savez(folder / CHECKPOINT_HEAD, **head, **opt)
        state = {**state, "backbone": info.backbone.digest(model)}
    (folder / CHECKPOINT_STATE).write_text(json.dumps(state))


def read(folder: Path) -> tuple[Any, dict[str, Any], dict | None]:
    """(the whole model or None, state, head arrays or None) of a checkpoint folder."""
    import keras

    state = json.loads((folder / CHECKPOINT_STATE).read_text())
    if (folder / CHECKPOINT_MODEL).is_file():
        return keras.saving.load_model(folder / CHECKPOINT_MODEL, compile=True), state, None
    with np.load(folder / CHECKPOINT_HEAD) as f:
        return None, state, {k: f[k] for k in f.files}


def restore_head(info, model, trained, head: dict, state: dict[str, Any]) -> None:
    """Put a head checkpoint back into a freshly built ``model`` (registry entry ``info``) whose ``trained`` part
    (the model itself, or its head on cached features, sharing the optimizer) is what the epochs fit."""
    if info.backbone.digest(model) != state["backbone"]:
        raise RuntimeError(
            "the rebuilt backbone differs from the one this trial's checkpoint was trained on "
            "(its weights file changed?): start the sweep again rather than mix the two"
        )
    weights = info.backbone.head_weights(model)
    for i, w in enumerate(weights):
        w.assign(head[f"w{i}"])
    model.optimizer.build(trained.trainable_variables)
    for i, v in enumerate(model.optimizer.variables):
        v.assign(head[f"o{i}"])
