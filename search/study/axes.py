"""The axis table: every axis a study may search and what it is; every list of axes is derived from it. Plain data,
imported by the command line at start-up (no pandas)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Axis:
    """What a search axis is; every list of axes is derived from ``AXES``."""

    label: str | None  # its label in trial names ("" = the value alone); None: one of the study's four, named apart
    discrete: bool  # names and integers: a list or a choice, never a range (nobody would round a sampled batch size)
    train: bool = False  # a train setting (spec.Train) that a trial's value overrides
    model: bool = False  # taken by some models only (their registry entry says), and shapes the network


# Every axis a study may search, in table order (which task may search which: the task table's ``axes``).
AXES = {
    "model": Axis(None, discrete=True),
    "option": Axis(None, discrete=True),
    "lr": Axis(None, discrete=False),
    "dropout": Axis(None, discrete=False),
    "optimizer": Axis("", discrete=True, train=True),
    "lr_schedule": Axis("", discrete=True, train=True),
    "weight_decay": Axis("wd", discrete=False, train=True),
    "batch_size": Axis("bs", discrete=True, train=True),
    "dense_units": Axis("du", discrete=True, train=True, model=True),
    "base_filters": Axis("f", discrete=True, train=True, model=True),
    "blocks": Axis("b", discrete=True, train=True, model=True),
    "loss": Axis("", discrete=True, train=True),
}
EXTRA_AXES = {k: a.label for k, a in AXES.items() if a.train}  # beyond the study's four: label in trial names
CONFIG_KEYS = (*AXES, "repeat")  # a results row's configuration
DISCRETE_AXES = tuple(k for k, a in AXES.items() if a.discrete)
MODEL_HYPERPARAMETERS = tuple(k for k, a in AXES.items() if a.model)
