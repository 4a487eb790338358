"""Split plans (pure functions): sizes of both loading options, both protocols' leakage audit, determinism."""

import numpy as np
import pytest

from data_pipeline.splits import leakage_audit, plan_splits, split_sizes, top_up

REAL = (504, 985, 963, 804)
LABELS = np.repeat(np.arange(4), REAL)


def _per_class(rows):
    return np.bincount(LABELS[rows[:, 0]], minlength=4).tolist()


def _brute_force_leaks(plan, split):
    train_sources = {int(s) for s in plan.train[:, 0]}
    return sum(int(s) in train_sources for s in plan.split(split)[:, 0])


def test_split_sizes():
    assert split_sizes(1000, (0.7, 0.15, 0.15)) == (700, 150, 150)
    assert sum(split_sizes(3256, (0.7, 0.15, 0.15))) == 3256


def test_study_option1_is_700_150_150_per_class():
    plan = plan_splits(LABELS, option=1, protocol="study", balance_to=1000, seed=0)
    assert _per_class(plan.train) == [700] * 4
    assert _per_class(plan.val) == [150] * 4
    assert _per_class(plan.test) == [150] * 4


def test_study_option2_is_global_70_15_15():
    plan = plan_splits(LABELS, option=2, protocol="study", balance_to=1000, seed=0)
    assert (len(plan.train), len(plan.val), len(plan.test)) == (2800, 600, 600)
    assert _per_class(plan.train) != [700] * 4  # no per-class control, as the study says


@pytest.mark.parametrize("option", [1, 2])
def test_leak_free_keeps_val_test_original_and_balances_train(option):
    plan = plan_splits(LABELS, option=option, protocol="leak_free", balance_to=1000, seed=0)
    assert _per_class(plan.train) == [700] * 4
    assert (plan.val[:, 1] == 0).all() and (plan.test[:, 1] == 0).all()
    originals = np.concatenate([plan.train[plan.train[:, 1] == 0], plan.val, plan.test])[:, 0]
    assert sorted(originals.tolist()) == list(range(len(LABELS)))  # every original used exactly once
    assert leakage_audit(plan) == {"val": 0, "test": 0}


@pytest.mark.parametrize("option", [1, 2])
def test_study_protocol_audit_reports_the_true_count(option):
    plan = plan_splits(LABELS, option=option, protocol="study", balance_to=1000, seed=0)
    audit = leakage_audit(plan)
    assert audit == {"val": _brute_force_leaks(plan, "val"), "test": _brute_force_leaks(plan, "test")}
    assert audit["val"] > 100 and audit["test"] > 100  # the paper's protocol leaks


def test_same_seed_same_plan_other_seed_other_plan():
    a = plan_splits(LABELS, option=1, protocol="leak_free", balance_to=1000, seed=7)
    b = plan_splits(LABELS, option=1, protocol="leak_free", balance_to=1000, seed=7)
    c = plan_splits(LABELS, option=1, protocol="leak_free", balance_to=1000, seed=8)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(s), b.split(s))
    assert not np.array_equal(a.test, c.test)


def test_top_up_spreads_copies_evenly_and_never_drops_originals():
    rows = top_up(np.arange(3), 10, np.random.default_rng(0))
    assert len(rows) == 10 and sorted(rows[rows[:, 1] == 0, 0].tolist()) == [0, 1, 2]
    copies = np.bincount(rows[rows[:, 1] > 0, 0], minlength=3)
    assert copies.max() - copies.min() <= 1
    assert len(top_up(np.arange(5), 3, np.random.default_rng(0))) == 5  # more than the target: all kept


def test_no_balancing_means_no_augmented_rows():
    plan = plan_splits(LABELS, option=2, protocol="study", balance_to=None, seed=0)
    assert (np.concatenate([plan.train, plan.val, plan.test])[:, 1] == 0).all()
    assert leakage_audit(plan) == {"val": 0, "test": 0}


@pytest.mark.parametrize("kwargs", [{"option": 3}, {"protocol": "leaky"}, {"fractions": (0.5, 0.5, 0.5)}])
def test_invalid_plans_rejected(kwargs):
    with pytest.raises(ValueError):
        plan_splits(LABELS, **kwargs)
