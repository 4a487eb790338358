"""Find, read, check, split, balance, augment and cache blood-smear images and masks. Never imports ``search``."""

from data_pipeline.errors import DataError
from data_pipeline.io import LoadedData, check, load
from data_pipeline.layout import DatasetIndex, scan
from data_pipeline.prepare import DataConfig, PreparedData, Split, folds_summary, prepare, prepare_folds
from data_pipeline.splits import SplitPlan, fold_plans, leakage_audit, plan_splits

__all__ = [
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
