"""Find, read, check, split, balance, augment and cache images and masks, whatever their layout and mask encoding.
Never imports ``search``."""

from data_pipeline.checks import CheckReport, check
from data_pipeline.errors import DataError
from data_pipeline.io import LoadedData, load
from data_pipeline.layout import LAYOUTS, DatasetIndex, scan
from data_pipeline.prepare import DataConfig, PreparedData, Split, folds_summary, prepare, prepare_folds
from data_pipeline.splits import SplitPlan, fold_plans, leakage_audit, plan_splits

__all__ = [
    "LAYOUTS",
    "CheckReport",
    "DataConfig",
    "DataError",
    "DatasetIndex",
    "LoadedData",
    "PreparedData",
    "Split",
    "SplitPlan",
    "check",
    "fold_plans",
    "folds_summary",
    "leakage_audit",
    "load",
    "plan_splits",
    "prepare",
    "prepare_folds",
    "scan",
]
