"""What a trial writes into each epoch's checkpoint, and how it comes back.

Every epoch reports a checkpoint, so a trial resumed after a crash, a killed driver or a lost node continues from its
last completed epoch. Ray Tune keeps two per trial (``CheckpointConfig(num_to_keep=1)`` keeps the best by
``SCORE`` and always the latest). A checkpoint folder holds:

- ``model.keras`` (compiled, optimizer included), or with cross-validation one ``fold<i>.keras`` per fold: the
  whole model, or for a trial on a frozen backbone (``search.sweep.features``) its head alone (features -> output), a
  few MB instead of the backbone's hundreds;
- ``state.json``: the epoch, the best validation value so far, each model's dropout streams (``seed_states``, which a
  ``.keras`` file leaves out) and, for a head, ``backbone``: which backbone it was trained on (its ``Backbone``
  record and weights digest) and how the whole model is built. The experiment keeps
  each backbone once (``backbones/<digest>.weights.h5``); ``whole_model`` puts the two together where a whole
  model is needed (export, Grad-CAM, test-time augmentation).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

CHECKPOINT_MODEL = "model.keras"
CHECKPOINT_FOLD = "fold{}.keras"  # cross-validation: one model per fold, trained in lockstep
CHECKPOINT_STATE = "state.json"
SCORE = "checkpoint_score"  # what Ray ranks checkpoints by: the validation metric where it improved, else -inf


def write(folder: Path, models: list, state: dict[str, Any]) -> None:
    """Write one checkpoint into ``folder``: the model (or each fold's) and ``state``."""
    names = [CHECKPOINT_MODEL] if len(models) == 1 else [CHECKPOINT_FOLD.format(i) for i in range(len(models))]
    for model, name in zip(models, names):
        model.save(folder / name)
    seeds = [[_seed_state(g) for g in _seed_generators(model)] for model in models]
    (folder / CHECKPOINT_STATE).write_text(json.dumps(state | {"seed_states": seeds}))


def _seed_generators(model) -> list:
    """The model's own random streams (a Dropout's seed generator), in layer order. A ``.keras`` file does not keep
    where they stand, so a checkpoint keeps it: a resumed trial draws the dropout masks an uninterrupted one draws."""
    import keras

    out = []
    for layer in model.layers:
        out += [v for v in vars(layer).values() if isinstance(v, keras.random.SeedGenerator)]
        if hasattr(layer, "layers"):  # a nested model (a backbone)
            out += _seed_generators(layer)
    return out


def _seed_state(generator) -> list[int]:
    import keras

    return [int(x) for x in keras.ops.convert_to_numpy(generator.state)]


def model_files(folder: Path) -> list[Path]:
    """A checkpoint's model files: its fold models in fold order, or its one model."""
    folder, out = Path(folder), []
    while (folder / CHECKPOINT_FOLD.format(len(out))).is_file():
        out.append(folder / CHECKPOINT_FOLD.format(len(out)))
    return out or [folder / CHECKPOINT_MODEL]


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / CHECKPOINT_STATE).read_text())


def load(folder: Path, *, compile: bool = True) -> list:
    """The checkpoint's models as they were saved (heads or whole models; compiled: a resumed trial goes on)."""
    import keras

    import models.metrics  # noqa: F401  registers the losses and metrics a compiled checkpoint names (bce_dice, ...)

    loaded = [keras.saving.load_model(f, compile=compile) for f in model_files(folder)]
    seed_states = read_state(folder).get("seed_states")  # absent from checkpoints written before they were kept
    for model, states in zip(loaded, seed_states or [], strict=bool(seed_states)):
        for generator, state in zip(_seed_generators(model), states, strict=True):
            generator.state.assign(keras.ops.convert_to_tensor(state, dtype=generator.state.dtype))
    return loaded


def ensemble(members: list):
    """One Keras model whose output is the mean of the members' outputs (probabilities or masks), as nnU-Net
    ensembles its cross-validation folds. Member i is the nested model ``fold_i``; preprocessing stays inside each."""
    import keras

    for i, m in enumerate(members):
        m.name = f"fold_{i}"
    inputs = keras.Input(members[0].input_shape[1:], dtype=members[0].inputs[0].dtype)
    return keras.Model(inputs, keras.layers.Average()([m(inputs) for m in members]), name="ensemble")


def fold_member(model, i: int):
    """Fold model i of an ensemble built by ``ensemble``."""
    return model.get_layer(f"fold_{i}")


def saved_model(folder: Path):
    """What a checkpoint holds as one model (its model, or the ensemble of its fold models): for a trial on a frozen
    backbone a head, which scores the backbone's cached features."""
    members = load(folder, compile=False)
    return members[0] if len(members) == 1 else ensemble(members)


def head_record(folder: Path) -> dict[str, Any] | None:
    """The backbone a head checkpoint was trained on (``backbone`` of its state), None for a whole model."""
    return read_state(folder).get("backbone")


def backbone_weights(record: dict[str, Any], experiment_dir: str, tmp: str | Path) -> Path:
    """A local file of the experiment's copy of a head checkpoint's backbone (``record``: its ``head_record``): the
    file itself in a local experiment, downloaded into ``tmp`` from cloud storage."""
    from search import storage as store
    from search.study.experiment import backbone_file

    location = backbone_file(experiment_dir, record["digest"])
    if not store.is_uri(location):
        return Path(location)
    local = Path(tmp) / Path(location).name
    local.write_bytes(store.read_bytes(location))
    return local


def whole_model(folder: Path, experiment_dir: str):
    """The whole model (image -> output) of a checkpoint: its model, or each head put on the experiment's copy of
    its backbone (``models.assemble``); the ensemble of the folds with cross-validation."""
    import models

    record = head_record(folder)
    members = load(folder, compile=False)
    if record is not None:
        spec, size = record["spec"], record["spec"]["input_size"]
        with tempfile.TemporaryDirectory() as tmp:
            weights = backbone_weights(record, experiment_dir, tmp)
            members = [
                models.assemble(
                    spec["model"],
                    head,
                    weights,
                    input_shape=(size, size, 3),
                    mixed_precision=spec["policy"],
                    **record["build"],
                )
                for head in members
            ]
        if models.get(spec["model"]).backbone.digest(members[0]) != record["digest"]:
            raise RuntimeError(f"the experiment's backbone {record['digest']} is not the one its file holds")
    return members[0] if len(members) == 1 else ensemble(members)
