"""Optimizers and learning-rate schedules by name (seed 003's search space: adam, rmsprop, sgd, adamw).

The schedule is a Keras ``LearningRateSchedule`` of the optimizer's step counter (``optimizer.iterations``), and both
are saved inside a ``.keras`` checkpoint: a resumed trial continues its schedule where it stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

OPTIMIZERS = ("adam", "rmsprop", "sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine", "exponential")
SGD_MOMENTUM = 0.9
EXPONENTIAL_RATE = 0.9  # exponential: the learning rate × 0.9 after every epoch (seed 003's decay_rate)
COSINE_FLOOR = 0.01  # cosine: from lr down to lr × 0.01 at the last epoch


def learning_rate(lr: float, schedule: str, *, steps_per_epoch: int, epochs: int):
    """``lr`` (constant) or a schedule over ``epochs`` epochs of ``steps_per_epoch`` optimizer steps."""
    import keras

    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps_per_epoch * epochs, alpha=COSINE_FLOOR)
    if schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr, decay_steps=steps_per_epoch, decay_rate=EXPONENTIAL_RATE)
    raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {schedule!r}")


def build_optimizer(
    name: str,
    lr: float,
    *,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    steps_per_epoch: int = 1,
    epochs: int = 1,
) -> keras.optimizers.Optimizer:
    """Optimizer ``name`` at learning rate ``lr`` (under ``schedule``). ``weight_decay`` is Keras's decoupled weight
    decay, for every optimizer (adamw with 0 is adam); sgd uses momentum 0.9."""
    import keras

    rate = learning_rate(lr, schedule, steps_per_epoch=steps_per_epoch, epochs=epochs)
    decay = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(rate, weight_decay=decay)
    if name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(rate, weight_decay=decay)
    if name == "sgd":
        return keras.optimizers.SGD(rate, momentum=SGD_MOMENTUM, weight_decay=decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")
