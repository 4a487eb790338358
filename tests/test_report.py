"""The report's table builders and plots on hand-made result frames (pure functions, real PNG files)."""

import json

import numpy as np
import pandas as pd
import pytest

from search import report


def _frame(repeats=1):
    rows = []
    for model in ("inception_resnet_v2", "nasnet_large"):
        for lr in (0.1, 0.01, 0.001, 0.0001):
            for dropout in (0.0, 0.2, 0.4):
                for r in range(repeats):
                    val = (
                        0.25 if lr == 0.1 else 0.5 + lr * 10 + dropout / 10 + 0.01 * r + (model == "nasnet_large") / 20
                    )
                    rows.append(
                        {
                            "trial": f"{model}-opt2-lr{lr:g}-do{dropout:g}" + (f"-r{r}" if repeats > 1 else ""),
                            "trial_id": f"x_{len(rows):05d}",
                            "model": model,
                            "option": 2,
                            "lr": lr,
                            "dropout": dropout,
                            **({"repeat": r} if repeats > 1 else {}),
                            "status": "diverged" if lr == 0.1 else "stopped" if lr == 0.0001 else "completed",
                            "epochs": 1 if lr == 0.1 else 2 if lr == 0.0001 else 6,
                            "wall_seconds": 10.0 * (1 if lr == 0.1 else 2 if lr == 0.0001 else 6),
                            "val_accuracy": val,
                            "val_loss": 1 - val,
                            "train_accuracy": val + 0.1,
                            "train_loss": 0.9 - val,
                            "test_accuracy": val - 0.02,
                            "test_loss": 1.1 - val,
                            "test_precision": val - 0.03,
                            "test_recall": val - 0.04,
                            "test_f1": val - 0.05,
                            "checkpoint": "",
                        }
                    )
    return pd.DataFrame(rows)


def _sweep(protocol="leak_free"):
    return {
        "study": {"task": "classification", "train": {"epochs": 6}, "data": {"protocol": protocol}},
        "resources": {"gpus_per_trial": 0.5},
        "data": {"2": {"leakage_audit": {"val": 0, "test": 0}, "classes": ["Benign", "Early", "Pre", "Pro"]}},
    }


def test_family_tables_follow_the_study_and_mark_choice_divergence_and_early_stops():
    agg = report.aggregate(_frame())
    assert report.families(agg) == [("inception_resnet_v2", 2), ("nasnet_large", 2)]
    table = report.family_table(agg, "classification", ("inception_resnet_v2", 2), max_epochs=6)
    assert list(table["lr"]) == ["0.1"] * 3 + ["0.01"] * 3 + ["0.001"] * 3 + ["0.0001"] * 3  # lr descending
    assert list(table["dropout"][:3]) == ["0.4", "0.2", "0"]  # dropout 0.4, 0.2, 0 as in the study
    assert list(table.columns[2:11]) == [h for h, _ in report.COLUMNS["classification"]]
    chosen = table[table["note"].str.contains("chosen")]
    assert len(chosen) == 1 and (chosen["lr"].item(), chosen["dropout"].item()) == ("0.01", "0.4")
    assert table["note"][:3].str.startswith("diverged").all()
    assert (table["epochs"][9:] == "2 (stopped by ASHA)").all() and (table["epochs"][3:9] == "6").all()


def test_repeats_become_mean_and_std():
    agg = report.aggregate(_frame(repeats=3))
    assert len(agg) == 24 and (agg["repeats"] == 3).all()
    row = agg[(agg["model"] == "nasnet_large") & (agg["lr"] == 0.01) & (agg["dropout"] == 0.2)].iloc[0]
    assert row["val_accuracy"] == pytest.approx(0.5 + 0.1 + 0.02 + 0.05 + 0.01)  # mean of +0, +0.01, +0.02
    assert row["val_accuracy_std"] == pytest.approx(0.01)
    table = report.family_table(agg, "classification", ("nasnet_large", 2), max_epochs=6)
    assert table.loc[4, "val acc"] == "0.6800 ± 0.0100"
    checks = report.trust(agg, "classification", _sweep())
    assert checks["repeats"] == 3 and checks["spread"] == pytest.approx(0.01, abs=1e-9)
    assert checks["winner"] == "nasnet_large option 2 lr 0.01 dropout 0.4"
    assert checks["gap"] == pytest.approx(0.02)
    assert any("larger than twice the spread" in line for line in report.trust_lines(checks))


def test_summary_and_side_by_side_with_the_published_study():
    agg = report.aggregate(_frame())
    summary = report.summary_table(agg, "classification")
    assert list(summary["model"]) == ["inception_resnet_v2", "nasnet_large"]
    assert list(summary["lr"]) == ["0.01", "0.01"] and list(summary["dropout"]) == ["0.4", "0.4"]
    ref = report.reference("classification")
    assert len(ref) == 48 and len(report.reference("segmentation")) == 36
    versus = report.versus_study(agg, "classification", ref)
    row = versus[(versus["family"] == "inception_resnet_v2 / option 2") & (versus["metric"] == "test_accuracy")]
    published = ref[
        (ref["model"] == "InceptionResNetV2")
        & (ref["loading_option"] == 2)
        & (ref["lr"] == 0.01)
        & (ref["dropout"] == 0.4)
    ]["test_acc"].item()
    assert row["study"].item() == pytest.approx(published / 100)
    assert row["ours − study"].item() == pytest.approx(row["ours"].item() - published / 100)


def test_cost_counts_what_asha_saved():
    frame = _frame()
    per_trial, totals = report.cost_table(frame, gpus_per_trial=0.5, max_epochs=6)
    assert totals["trials"] == 24 and totals["trial seconds"] == pytest.approx(frame["wall_seconds"].sum())
    assert totals["GPU-seconds"] == pytest.approx(0.5 * frame["wall_seconds"].sum())
    assert totals["trial seconds without early stopping"] == pytest.approx(24 * 60.0)  # 10 s/epoch × 6 epochs
    assert totals["saved by ASHA (seconds)"] == pytest.approx(24 * 60.0 - frame["wall_seconds"].sum())
    assert (per_trial["seconds_per_epoch"] == 10.0).all()


def test_the_leaky_protocol_gets_a_banner():
    agg = report.aggregate(_frame())
    assert not any("WARNING" in line for line in report.trust_lines(report.trust(agg, "classification", _sweep())))
    leaky = report.trust_lines(report.trust(agg, "classification", _sweep("study")))
    assert "WARNING" in leaky[0] and "optimistic" in leaky[0]


def test_plots_write_real_pngs(tmp_path):
    import matplotlib.image

    frame, agg = _frame(), report.aggregate(_frame())
    figs = report.Figures(tmp_path)
    report.plot_heatmaps(figs, agg, "classification")
    report.plot_epochs(figs, frame, 6)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 5)
    probs = rng.dirichlet(np.ones(4), 20)
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (labels, probs.argmax(1)), 1)
    classes = ["Benign", "Early", "Pre", "Pro"]
    rep = {"confusion_matrix": cm.tolist(), "per_class": {c: {"roc_auc": 0.5} for c in classes}}
    report.plot_best_classifier(figs, rep, classes, probs, labels)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    masks = (rng.random((2, 3, 32, 32)) > 0.5).astype(np.uint8)
    report.plot_best_segmenter(figs, images, masks[0], masks[1])
    assert [n for n, _ in figs.items] == ["heatmap", "asha_epochs", "best_classifier", "best_segmenter"]
    for name, _ in figs.items:
        img = matplotlib.image.imread(tmp_path / f"{name}.png")
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0.01  # a real picture, not blank
    json.dumps(figs.items)


def test_a_tie_is_called_a_tie_and_table_files_get_plain_names():
    frame = _frame()
    frame["val_accuracy"] = 0.25  # every configuration collapsed to one class: nothing to choose between
    lines = report.trust_lines(report.trust(report.aggregate(frame), "classification", _sweep()))
    assert any("A tie" in line for line in lines)
    assert report._slug("inception_resnet_v2 / option 1") == "inception_resnet_v2_option_1"
