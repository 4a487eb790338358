"""Find, read, check, split, balance, augment and cache images and masks, whatever their layout and mask encoding.
Never imports ``search``.

Importing the package is light: each name below is imported from its module the first time it is used, so reading
a ``DataConfig`` never loads OpenCV or albumentations.
"""

from __future__ import annotations

import importlib
import os

# Nothing is downloaded at run time: albumentations asks PyPI for a newer version at every import (2 s timeout) unless
# told not to. Set here, before any module of the package can import it, so the CLI, every Ray worker (on any node)
# and every submitted job have it; a user's own setting is kept.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# A name that is also a module's (``prepare``) is imported here: Python sets a package's attribute to its submodule
# once that is imported, which would hide a lazy function of the same name. prepare.py itself is light.
from data_pipeline.prepare import DataConfig, PreparedData, Split, folds_summary, prepare, prepare_folds

_WHERE = {
    "CheckReport": "checks",
    "check": "checks",
    "DataError": "errors",
    "duplicate_clusters": "duplicates",
    "LoadedData": "io",
    "load": "io",
    "LAYOUTS": "layout",
    "DatasetIndex": "layout",
    "scan": "layout",
    "SplitPlan": "splits",
    "fold_plans": "splits",
    "leakage_audit": "splits",
    "plan_splits": "splits",
}
__all__ = [  # the eager names, then the lazy ones
    "DataConfig",
    "PreparedData",
    "Split",
    "folds_summary",
    "prepare",
    "prepare_folds",
    *_WHERE,
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(f"data_pipeline.{_WHERE[name]}"), name)
