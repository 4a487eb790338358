"""Patient (subject) groups: no group in two splits, for both loading options, both protocols and folds; plans
without groups exactly as before; manifests that name their columns; `sweep data check` on groups; bad group
settings refused in one line, nothing written; the sweep record's groups_crossing."""

import hashlib
import json

import cv2
import numpy as np
import pytest
from conftest import tree_state
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipeline.groups import group_ids, group_names
from data_pipeline.splits import SPLITS, fold_plans, leakage_audit, plan_splits

# ---- plans (pure) ----------------------------------------------------------------------------------------------


def _groups_by_split(plan, groups):
    return [set(groups[plan.split(s)[:, 0]].tolist()) for s in SPLITS]


def _crossing(plan, groups) -> int:
    """Brute force: groups seen in more than one split."""
    seen = _groups_by_split(plan, groups)
    return sum(sum(g in s for s in seen) > 1 for g in set(groups.tolist()))


# Patients with 1-6 images each, every patient of one class (option 1 needs that).
_PATIENTS = st.lists(st.tuples(st.integers(0, 2), st.integers(1, 6)), min_size=12, max_size=60)


def _arrays(patients):
    labels = np.concatenate([[c] * n for c, n in patients])
    groups = np.concatenate([[g] * n for g, (_, n) in enumerate(patients)])
    order = np.random.default_rng(len(labels)).permutation(len(labels))  # a dataset's order is not by patient
    return labels[order], groups[order]


@pytest.mark.filterwarnings("ignore:The least populated class")  # a tiny class: sklearn says so
@settings(max_examples=40, deadline=None)
@given(patients=_PATIENTS, option=st.sampled_from([1, 2]), protocol=st.sampled_from(["leak_free", "study"]))
def test_no_group_in_two_splits(patients, option, protocol):
    labels, groups = _arrays(patients)
    plan = plan_splits(labels, option=option, protocol=protocol, balance_to=20, seed=1, groups=groups)
    assert _crossing(plan, groups) == 0
    assert leakage_audit(plan, groups)["groups_crossing"] == 0
    originals = np.concatenate([p[p[:, 1] == 0, 0] for p in (plan.train, plan.val, plan.test)])
    assert sorted(originals.tolist()) == list(range(len(labels)))  # every image once, as an original
    if protocol == "leak_free":
        for fold in fold_plans(labels, plan, 3, balance_to=20, seed=1, groups=groups):
            assert _crossing(fold, groups) == 0


def test_folds_are_grouped_stratified_and_cover_the_pool():
    patients = [(c, n) for c in range(3) for n in (2, 3, 4, 5) * 5]
    labels, groups = _arrays(patients)
    base = plan_splits(labels, option=2, seed=0, groups=groups)
    folds = fold_plans(labels, base, 4, seed=0, groups=groups)
    vals = np.concatenate([f.val[:, 0] for f in folds])
    pool = np.concatenate([base.train[:, 0], base.val[:, 0]])
    assert sorted(vals.tolist()) == sorted(pool.tolist())  # each non-test image validates in exactly one fold
    for f in folds:
        assert set(groups[f.val[:, 0]].tolist()).isdisjoint(groups[f.train[:, 0]].tolist())
        shares = np.bincount(labels[f.val[:, 0]], minlength=3) / len(f.val)
        assert np.abs(shares - 1 / 3).max() < 0.15  # stratified by class as far as the groups allow


@pytest.mark.parametrize("option", [1, 2])
def test_grouped_splits_stay_close_to_70_15_15(option):
    patients = [(c, n) for c in range(2) for n in (1, 2, 3, 4) * 10]  # 100 images per class, 40 patients
    labels, groups = _arrays(patients)
    plan = plan_splits(labels, option=option, balance_to=None, seed=3, groups=groups)
    largest = np.bincount(groups).max()
    for split, share in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
        per_class = np.bincount(labels[plan.split(split)[:, 0]], minlength=2)
        if option == 1:  # each class cut on its own, at the group boundary nearest its share
            assert np.abs(per_class - share * 100).max() <= largest
        else:
            assert abs(per_class.sum() - share * 200) <= largest


def test_option_1_refuses_a_group_spanning_classes():
    labels, groups = np.array([0, 0, 1, 1, 0, 1]), np.array([0, 1, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="group 1 spans classes"):
        plan_splits(labels, option=1, groups=groups)
    plan = plan_splits(labels, option=2, groups=groups)  # option 2 pools the classes: a group stays whole
    assert _crossing(plan, groups) == 0


def _digest() -> str:
    """Plans without groups over both options, protocols, balancing, seeds and folds."""
    h = hashlib.sha256()
    labels = np.repeat(np.arange(3), (23, 41, 17))[np.random.default_rng(5).permutation(81)]
    for option in (1, 2):
        for protocol in ("leak_free", "study"):
            for balance in (None, 50):
                for seed in (0, 3):
                    p = plan_splits(labels, option=option, protocol=protocol, balance_to=balance, seed=seed)
                    plans = [p]
                    if protocol == "leak_free":
                        plans += fold_plans(labels, p, 4, balance_to=balance, seed=seed)
                        plans += fold_plans(labels, p, 3, seed=seed, stratify=False)
                    for plan in plans:
                        for s in SPLITS:
                            h.update(plan.split(s).tobytes())
    return h.hexdigest()


def test_without_groups_the_plans_are_the_arrays_they_were():
    """Recorded experiments name their splits by seed: the digest of main's plans before groups existed (a5945a4)."""
    assert _digest() == "85f7deb4661f3ae951fb03908e944b55cd42f5023038f915c08e22d843743764"
    labels = np.repeat(np.arange(3), (23, 41, 17))
    for option in (1, 2):  # each image its own group is the ungrouped plan, draw for draw
        a = plan_splits(labels, option=option, balance_to=50, seed=2)
        b = plan_splits(labels, option=option, balance_to=50, seed=2, groups=np.arange(len(labels))[::-1])
        for s in SPLITS:
            np.testing.assert_array_equal(a.split(s), b.split(s))
    assert "groups_crossing" not in leakage_audit(a)  # no groups: nothing to count, nothing claimed


def test_group_ids_and_names():
    ids = group_ids(["P2", "", "P1", "P2", ""])
    assert ids.tolist()[:4] == [1, 2, 0, 1] and ids[4] not in ids[:4]  # an image without a group: its own
    names = ["benign/P01_a.png", "benign/P01_b.png", "malignant/P02_a.png", "malignant/x.png"]
    assert group_names(names, r"^(P\d+)_") == ("P01", "P01", "P02", "")  # tried on the file name too
    assert group_names(names, r"^(\w+)/") == ("benign", "benign", "malignant", "malignant")
    assert group_names(names, "Patient", {"patient": ["a", "a", "b", " "]}) == ("a", "a", "b", "")


# ---- real files: class folders with a pattern, a manifest with its own column names --------------------------------


def _dataset(root):
    """Two classes, 6 patients each, 3 fields of view per patient (P01_a.png ...), and a manifest naming them with
    columns path,label,patient,site (the usual names: no column settings needed)."""
    rows = ["path,label,patient,site"]
    rng = np.random.default_rng(0)  # every image its own (no copies: those would join patients)
    for cls, patients in (("benign", range(1, 7)), ("malignant", range(7, 13))):
        (root / "images" / cls).mkdir(parents=True)
        for p in patients:
            for view in "abc":
                name = f"images/{cls}/P{p:02d}_{view}.png"
                assert cv2.imwrite(str(root / name), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
                rows.append(f"{name},{cls},P{p:02d},site{p % 2}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def data(tmp_path):
    return _dataset(tmp_path / "user")


def _check(capsys, *args):
    from search.cli import main

    code = main(["data", "check", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_reports_groups_of_a_pattern_and_of_a_manifest_column(data, capsys):
    before = tree_state(data)
    code, out, _ = _check(capsys, data / "images", "--group-by", r"^(P\d+)_")
    assert code == 0 and "groups: 12; images per group: min 3, median 3, max 3; 12 with 1 class(es)" in out
    code, out, _ = _check(capsys, data / "list.csv", "--group-by", "patient", "--json")
    report = json.loads(out)
    assert report["layout"] == "csv" and report["counts"] == {"benign": 18, "malignant": 18, "total": 36}
    assert report["groups"]["groups"] == 12 and report["groups"]["spanning_classes"] == {}
    code, out, _ = _check(capsys, data / "list.csv", "--group-by", "site")
    assert "groups spanning classes (loading option 1 refuses them): site0 (benign, malignant)" in out
    assert tree_state(data) == before


def test_a_manifest_names_its_columns(data, capsys):
    text = (data / "list.csv").read_text().replace("path,label,", "File Name,Finding,")
    (data / "other.csv").write_text(text)
    code, _, err = _check(capsys, data / "other.csv")
    assert code == 2 and "no image or label column" in err and "data.image_column" in err
    code, out, _ = _check(capsys, data / "other.csv", "--image-column", "file name", "--label-column", "FINDING")
    assert code == 0 and "layout csv, task classification, 36 images" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["list.csv", "--group-by", "patient_id"], "is not a column of"),
        (["images", "--group-by", r"^P\d+_"], "has 0 capture groups, not 1"),
        (["images", "--group-by", r"^(Q\d+)_"], "matches none of the 36 image paths"),
        (["images", "--label-column", "patient"], "names a manifest column, but"),
        (["list.csv", "--label-column", "diagnosis"], "has no column 'diagnosis'"),
    ],
)
def test_bad_group_and_column_settings_are_one_line(data, capsys, args, message):
    before = tree_state(data)
    code, out, err = _check(capsys, data / args[0], *args[1:])
    assert code == 2 and not out and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert tree_state(data) == before


def test_option_1_run_refuses_a_group_spanning_classes_and_writes_nothing(data, tmp_path, capsys):
    from search.cli import main

    before = tree_state(data)
    storage = tmp_path / "runs"
    args = ["run", "classification", "--preset", "smoke", "--data-dir", str(data / "list.csv"), "--storage"]
    code = main([*args, str(storage), "--set", "data.group_by=site", "--name", "g"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "group 'site0' holds images of classes benign, malignant" in err and "option 2" in err
    assert not storage.exists() and tree_state(data) == before


@pytest.mark.parametrize("folds", [1, 3])
def test_the_sweep_record_says_no_group_crosses(data, folds):
    """What sweep.json's data section records (runner._data_summary), from the images prepared for the trials."""
    from search.study.spec import load_study
    from search.sweep.runner import _data_summary, prepare_all

    overrides = {
        "data": {"data_dir": str(data / "images"), "group_by": r"^(P\d+)_", "balance_to": None},
        "search": {"folds": folds},
    }
    datasets = prepare_all(load_study("classification", "smoke", overrides))
    for option, prepared in datasets.items():
        summary = _data_summary(prepared)
        assert summary["leakage_audit"]["groups_crossing"] == 0, option
        for fold in prepared if folds > 1 else (prepared,):
            names = np.asarray(fold.names)
            patients = [{n.split("/")[-1][:3] for n in names[fold.split(s).sources]} for s in SPLITS]
            assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
            assert min(len(p) for p in patients) >= 1


def test_the_study_types_its_group_and_column_settings():
    from search.study.spec import SpecError, load_study

    with pytest.raises(SpecError, match=r"data\.group_by: 5 must be a text or null") as err:
        load_study("classification", "smoke", {"data": {"group_by": 5, "image_column": " "}})
    assert "data.image_column: ' ' must be null" in str(err.value)
    study = load_study("classification", "smoke", {"data": {"group_by": "patient", "label_column": "finding"}})
    assert study.data.columns == {"image": None, "label": "finding", "mask": None}


def test_more_folds_than_groups_is_a_data_error():
    from data_pipeline.errors import DataError

    labels, groups = np.repeat([0, 1], 12), np.repeat(np.arange(8), 3)
    base = plan_splits(labels, option=2, seed=0, groups=groups)
    with pytest.raises(
        DataError, match=r"search.folds: 8 folds need 8 groups \(data.group_by\) outside the test split"
    ):
        fold_plans(labels, base, 8, groups=groups)
    assert len(fold_plans(labels, base, 8)) == 8  # without groups: 8 images suffice


def test_patients_and_copies_join_into_one_group():
    """A copy of patient A's image filed under patient B joins A and B: neither may cross splits."""
    from data_pipeline.groups import joined

    patients = np.array([0, 0, 1, 1, 2, 3])
    ids = joined(patients, [[1, 2]], 6)  # image 1 (A) and image 2 (B) are copies
    assert ids[0] == ids[1] == ids[2] == ids[3] and len({ids[0], ids[4], ids[5]}) == 3
    assert joined(None, [], 6) is None
    np.testing.assert_array_equal(np.unique(joined(None, [[4, 5]], 6), return_counts=True)[1], [1, 1, 1, 1, 2])
