"""Trust on data the sweep never saw: the model card in every export, `sweep evaluate --data-dir OTHER` on an external
set in another layout (a CSV manifest with a site column over PNGs written with OpenCV), its intervals, subgroups and
files, and every refusal in one line with nothing written. Reuses the session's exported classification sweep."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import cli, tree_state

from data_pipeline import synth
from search.errors import SweepError

SITES = ("north", "south", "west")


@pytest.fixture(scope="module")
def model_dir(classification_experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("external") / "model"
    from search.cli import main

    assert main(["export", str(classification_experiment), "--to", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> tuple:
    """A flat folder of smears (another seed and size than the sweep's) listed in manifest.csv with a site column."""
    root = tmp_path_factory.mktemp("other_hospital")
    rows = []
    for c, n in zip(synth.CLASSES, (4, 5, 4, 5), strict=True):
        for i in range(n):
            name = f"img_{c.lower()}_{i}.png"
            assert cv2.imwrite(str(root / name), cv2.cvtColor(synth.render(c, i, 48, seed=11), cv2.COLOR_RGB2BGR))
            rows.append({"image": name, "label": c, "site": SITES[len(rows) % 3]})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root, pd.DataFrame(rows)


def _intervals_hold(metrics: dict) -> None:
    """Each interval is ordered and within [0, 1], and holds its estimate (ECE, biased upward on resamples of a
    small set, may sit below its interval). None: undefined here (an AUROC on a resample without some class)."""
    for name, m in metrics.items():
        if m["low"] is None:
            assert m["high"] is None, (name, m)
            continue
        assert 0.0 <= m["low"] <= m["high"] <= 1.0, (name, m)
        if name != "ece":
            assert m["low"] <= m["value"] <= m["high"], (name, m)
    assert metrics["accuracy"]["low"] < metrics["accuracy"]["high"]  # a real interval, not a point


def test_every_export_carries_a_model_card(model_dir):
    manifest = json.loads((model_dir / "export.json").read_text())
    text = (model_dir / "MODEL_CARD.md").read_text()
    card = json.loads((model_dir / "model_card.json").read_text())
    for heading in (
        "# Model card: efficientnetv2_b0 (classification)",
        "## Intended use",
        "## Data",
        "## How groups and duplicates were handled",
        "## How the model was chosen",
        "## Test metrics (held-out test split)",
        "## Calibration",
        "## External validation",
        "## Limitations",
        "## Reporting checklist items covered",
    ):
        assert heading in text, heading
    assert "not a diagnostic device" in text and manifest["data"]["fingerprint"] in text
    assert "not grouped" in text  # this sweep set no group_by; it kept copies together, as every sweep does
    assert "each cluster of copies kept in one split (data.duplicates: group); pairs of copies split apart: 0" in text
    assert "computer-generated images" in text  # the synthetic set is a limitation, said so
    # the test metrics with intervals: the values are the ones the sweep recorded, each inside its interval
    test = card["test"]
    assert test["n"] == manifest["data"]["splits"]["test"]["n"]
    for key in ("accuracy", "f1", "roc_auc", "ece"):
        assert test["metrics"][key]["value"] == pytest.approx(manifest["test"][key], abs=1e-6), key
    _intervals_hold(test["metrics"])
    assert sum(r["n"] for r in test["reliability"]) == test["n"]
    assert card["calibration"]["temperature"] == manifest["calibration"]["temperature"]
    tripod = " ".join(r["TRIPOD+AI"] for r in card["checklists"])
    assert "12f (recalibration)" in tripod and "32 (external data)" not in " ".join(
        r["CLAIM"] for r in card["checklists"]
    )


def test_external_validation_with_subgroups_next_to_the_model(model_dir, external, capsys):
    root, rows = external
    before = tree_state(root)
    code, out, err = cli(capsys, "evaluate", model_dir, "--data-dir", root / "manifest.csv", "--by", "Site")
    assert code == 0, err
    written = sorted(p.name for p in model_dir.glob("external-*"))
    assert len(written) == 3 and all(n.startswith("external-other_hospital") and "-by-Site." in n for n in written)
    record = json.loads(next(model_dir.glob("external-*.json")).read_text())
    assert record["n"] == len(rows) and record["data"]["layout"] == "csv"
    assert record["data"]["fingerprint"] != record["training_fingerprint"]
    _intervals_hold(record["metrics"])
    assert set(record["metrics"]) == {"accuracy", "balanced_accuracy", "f1", "roc_auc", "ece"}
    # subgroups: one per site, n as in the manifest, summing to the whole
    by_site = {g["value"]: g for g in record["subgroups"]}
    assert {s: g["n"] for s, g in by_site.items()} == rows["site"].value_counts().to_dict()
    assert sum(g["n"] for g in record["subgroups"]) == record["n"]
    for g in record["subgroups"]:
        _intervals_hold(g["metrics"])
    # the accuracy is that of `sweep predict` on the same images
    from search.outputs.export import predict_images

    predicted = predict_images(model_dir, [root / name for name in rows["image"]])
    assert record["metrics"]["accuracy"]["value"] == pytest.approx((predicted["label"] == rows["label"]).mean())
    north = rows["site"] == "north"
    want = (predicted["label"][north] == rows["label"][north]).mean()
    assert by_site["north"]["metrics"]["accuracy"]["value"] == pytest.approx(want)
    # printed, and added to the model card (regenerated); the user's folder untouched
    assert "By Site (n per subgroup)" in out and "balanced accuracy" in out
    assert f"External validation: {record['name']}" in (model_dir / "MODEL_CARD.md").read_text()
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["external"][0]["data"]["folder"] == root.name  # by name only: the card is served
    assert "32 (external data)" in " ".join(r["CLAIM"] for r in card["checklists"])
    assert "<table" in (model_dir / f"{record['name']}.html").read_text()
    assert tree_state(root) == before


def test_external_refusals_are_one_line_and_write_nothing(model_dir, external, tmp_path, capsys):
    root, rows = external
    other = tmp_path / "renamed"
    other.mkdir()
    for name in rows["image"]:
        (other / name).write_bytes((root / name).read_bytes())
    renamed = rows.assign(label=rows["label"].replace("Pro", "Promyelocyte"))
    renamed.to_csv(other / "manifest.csv", index=False)
    state = tree_state(model_dir)

    def refused(*args) -> str:
        code, _, err = cli(capsys, "evaluate", model_dir, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    err = refused("--data-dir", other)
    assert "not in the model: Promyelocyte" in err and "missing: Pro" in err
    err = refused("--data-dir", root, "--by", "scanner")
    assert "no such column" in err and "site" in err
    folders = synth.write_dataset(tmp_path / "kaggle", (2, 2, 2, 2), size=32, seed=12)
    err = refused("--data-dir", folders, "--by", "site")
    assert "not a CSV manifest" in err
    err = refused("--by", "site")  # the study's own data: no subgroups to take from it
    assert "external validation" in err
    around = model_dir.parent  # a dataset whose folder holds the model: its files would land in the user's data
    for name in rows["image"]:
        (around / name).write_bytes((root / name).read_bytes())
    rows.to_csv(around / "manifest.csv", index=False)
    err = refused("--data-dir", around)
    assert "inside the external dataset's folder" in err
    assert tree_state(model_dir) == state


# ---- decisions, by hand ---------------------------------------------------------------------------------------------


def test_groups_and_duplicates_are_read_from_whatever_the_sweep_recorded():
    from search.outputs.card import handling

    plain = handling({"data": {"leakage_audit": {"val": 0, "test": 1}}}, {"data": {}})
    assert plain["groups"].startswith("not grouped") and plain["duplicates"].startswith("not checked")
    assert plain["augmented_copies"].startswith("0 validation and 1 test images")
    audit = {"val": 0, "test": 0, "groups_crossing": 0, "duplicates_crossing": 2}
    recorded = handling({"data": {"leakage_audit": audit}}, {"data": {"group_by": "patient", "duplicates": "ignore"}})
    assert recorded["groups"].startswith("grouped by `patient`") and "more than one split: 0" in recorded["groups"]
    assert recorded["duplicates"] == (
        "exact and near copies looked for; split like any images (data.duplicates: ignore); pairs of copies split "
        "apart: 2"
    )


def test_subgroups_of_a_manifest_with_other_column_names(tmp_path):
    """A manifest as hospitals write it (path, diagnosis, site): the image column is found by its usual names, as
    scan finds it, and is no subgroup column."""
    from data_pipeline import scan
    from search.outputs.external import ExternalSet, subgroup_values

    rows = [(f"{c}{i}.png", c, f"site{i}") for c in ("A", "B") for i in range(2)]
    for name, _, _ in rows:
        assert cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), len(name), np.uint8))
    pd.DataFrame(rows, columns=["path", "diagnosis", "site"]).to_csv(tmp_path / "manifest.csv", index=False)
    found = ExternalSet(scan(tmp_path, "classification", "auto"), "0" * 24, str(tmp_path / "manifest.csv"))
    assert subgroup_values(found, "Site") == [f"site{int(n[1])}" for n in found.index.names]
    with pytest.raises(SweepError, match=r"no such column to group by .*site"):
        subgroup_values(found, "path")


def test_class_check_and_file_names_by_hand():
    from search.outputs.external import class_problem, external_name

    assert class_problem(["a", "b"], ["a", "b"], "X") is None
    message = class_problem(["a", "b", "c"], ["a", "b", "d"], "X")
    assert "not in the model: d; missing: c" in message and "\n" not in message
    assert external_name("/data/site2", "0123456789ab", None) == "external-site2-01234567"
    assert (
        external_name("/d/site2/manifest.csv", "0123456789ab", "Scanner ID") == "external-site2-01234567-by-Scanner_ID"
    )
    assert external_name("/d/list.csv", "ff", None) == "external-list-ff"
