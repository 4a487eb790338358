"""The report's table builders and plots on hand-made result frames (pure functions, real PNG files)."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from models.tasks import task_info
from search.outputs.report import figures, tables


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


# sweep.json's record of the prepared data: one loading option, its leakage audit and classes
DEPLOYMENT = "Deployment: validation metric against CPU latency"
DATA = {"2": {"leakage_audit": {"val": 0, "test": 0}, "classes": ["Benign", "Early", "Pre", "Pro"]}}


def _study(protocol="leak_free"):
    from search.study.spec import load_study

    return load_study("classification", "smoke", {"train": {"epochs": 6}, "data": {"protocol": protocol}})


def test_family_tables_follow_the_study_and_mark_choice_divergence_and_early_stops():
    agg = tables.aggregate(_frame())
    assert tables.families(agg) == [("inception_resnet_v2", 2), ("nasnet_large", 2)]
    table = tables.family_table(agg, "classification", ("inception_resnet_v2", 2))
    assert list(table["lr"]) == ["0.1"] * 3 + ["0.01"] * 3 + ["0.001"] * 3 + ["0.0001"] * 3  # lr descending
    assert list(table["dropout"][:3]) == ["0.4", "0.2", "0"]  # dropout 0.4, 0.2, 0 as in the study
    assert list(table.columns[2:11]) == [h for h, _ in task_info("classification").report_columns]
    chosen = table[table["note"].str.contains("chosen")]
    assert len(chosen) == 1 and (chosen["lr"].item(), chosen["dropout"].item()) == ("0.01", "0.4")
    assert table["note"][:3].str.startswith("diverged").all()
    assert (table["epochs"][9:] == "2 (stopped by ASHA)").all() and (table["epochs"][3:9] == "6").all()


def test_a_trial_whose_scoring_failed_is_listed_with_its_error_and_the_next_best_is_chosen():
    frame = _frame()
    best = frame.loc[frame["model"] == "inception_resnet_v2", "val_accuracy"].idxmax()
    frame.loc[best, "status"] = "unscored"
    frame.loc[best, [c for c in frame if c.startswith("test_")]] = np.nan
    frame["error"] = ""
    frame.loc[best, "error"] = "zipfile.BadZipFile: File is not a zip file"
    table = tables.family_table(tables.aggregate(frame), "classification", ("inception_resnet_v2", 2))
    chosen = table[table["note"].str.contains("chosen")]
    assert (chosen["lr"].item(), chosen["dropout"].item()) == ("0.01", "0.2")  # the next best on validation
    assert table["note"][3].startswith("unscored: test scoring failed")  # lr 0.01, dropout 0.4
    listed = tables.unscored_table(frame)
    assert listed.to_dict("records") == [{"trial": frame.loc[best, "trial"], "error": frame.loc[best, "error"]}]


def test_repeats_become_mean_and_std():
    agg = tables.aggregate(_frame(repeats=3))
    assert len(agg) == 24 and (agg["repeats"] == 3).all()
    row = agg[(agg["model"] == "nasnet_large") & (agg["lr"] == 0.01) & (agg["dropout"] == 0.2)].iloc[0]
    assert row["val_accuracy"] == pytest.approx(0.5 + 0.1 + 0.02 + 0.05 + 0.01)  # mean of +0, +0.01, +0.02
    assert row["val_accuracy_std"] == pytest.approx(0.01)
    table = tables.family_table(agg, "classification", ("nasnet_large", 2))
    assert table.loc[4, "val acc"] == "0.6800 ± 0.0100"
    checks = tables.trust(agg, _study(), DATA)
    assert checks["repeats"] == 3 and checks["spread"] == pytest.approx(0.01, abs=1e-9)
    assert checks["winner"] == "nasnet_large option 2, lr 0.01, dropout 0.4"
    assert checks["gap"] == pytest.approx(0.02)
    assert any("larger than twice the spread" in line for line in tables.trust_lines(checks))


def test_summary_and_side_by_side_with_the_published_study():
    agg = tables.aggregate(_frame())
    summary = tables.summary_table(agg, "classification")
    assert list(summary["model"]) == ["inception_resnet_v2", "nasnet_large"]
    assert list(summary["lr"]) == ["0.01", "0.01"] and list(summary["dropout"]) == ["0.4", "0.4"]
    ref = tables.reference("classification")
    assert len(ref) == 48 and len(tables.reference("segmentation")) == 36
    versus = tables.versus_study(agg, "classification", ref)
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
    per_trial, totals = tables.cost_table(frame, gpus_per_trial=0.5, max_epochs=6)
    assert totals["trials"] == 24 and totals["trial seconds"] == pytest.approx(frame["wall_seconds"].sum())
    assert totals["GPU-seconds"] == pytest.approx(0.5 * frame["wall_seconds"].sum())
    assert totals["trial seconds without early stopping"] == pytest.approx(24 * 60.0)  # 10 s/epoch × 6 epochs
    assert totals["saved by ASHA (seconds)"] == pytest.approx(24 * 60.0 - frame["wall_seconds"].sum())
    assert (per_trial["seconds_per_epoch"] == 10.0).all()


def test_the_leaky_protocol_gets_a_banner():
    agg = tables.aggregate(_frame())
    assert not any("WARNING" in line for line in tables.trust_lines(tables.trust(agg, _study(), DATA)))
    leaky = tables.trust_lines(tables.trust(agg, _study("study"), DATA))
    assert "WARNING" in leaky[0] and "optimistic" in leaky[0]


def test_the_audit_line_counts_groups_crossing_only_when_grouped():
    agg = tables.aggregate(_frame())
    audit = {"val": 0, "test": 0, "groups_crossing": 0, "duplicates_crossing": 3}
    grouped = {"2": {**DATA["2"], "leakage_audit": audit}}
    line = tables.trust_lines(tables.trust(agg, _study(), grouped))[-1]
    assert "0 groups (data.group_by) in more than one split / 3 pairs of copies split apart" in line
    assert "groups" not in tables.trust_lines(tables.trust(agg, _study(), DATA))[-1]


def test_plots_write_real_pngs(tmp_path):
    import matplotlib.image

    frame, agg = _frame(), tables.aggregate(_frame())
    figs = figures.Figures(tmp_path)
    figures.plot_heatmaps(figs, agg, "classification")
    figures.plot_epochs(figs, frame, 6)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 5)
    probs = rng.dirichlet(np.ones(4), 20)
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (labels, probs.argmax(1)), 1)
    classes = ["Benign", "Early", "Pre", "Pro"]
    rep = {"confusion_matrix": cm.tolist(), "per_class": {c: {"roc_auc": 0.5} for c in classes}}
    figures.plot_best_classifier(figs, rep, classes, probs, labels)
    images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    masks = (rng.random((2, 3, 32, 32)) > 0.5).astype(np.uint8)
    figures.plot_best_segmenter(figs, images, masks[0], masks[1])
    assert [n for n, _ in figs.items] == ["heatmap", "asha_epochs", "best_classifier", "best_segmenter"]
    for name, _ in figs.items:
        img = matplotlib.image.imread(tmp_path / f"{name}.png")
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0.01  # a real picture, not blank
    json.dumps(figs.items)


def test_a_tie_is_called_a_tie_and_table_files_get_plain_names():
    frame = _frame()
    frame["val_accuracy"] = 0.25  # every configuration collapsed to one class: nothing to choose between
    lines = tables.trust_lines(tables.trust(tables.aggregate(frame), _study(), DATA))
    assert any("A tie" in line for line in lines)
    from search.outputs.report import _slug

    assert _slug("inception_resnet_v2 / option 1") == "inception_resnet_v2_option_1"


def _experiment(folder):
    """A finished classification sweep on disk, by hand: its record, results, the winner's test details and the
    test predictions of every trial (so that the report has every section a classifier gets)."""
    frame = _frame()
    for model, (ms, mib) in {"inception_resnet_v2": (41.5, 215.0), "nasnet_large": (120.25, 340.0)}.items():
        best = frame[frame["model"] == model]["val_accuracy"].idxmax()  # each architecture's best is timed
        frame.loc[best, ["latency_ms", "latency_p95_ms", "latency_all_threads_ms", "latency_all_threads_p95_ms"]] = (
            ms, ms * 1.1, ms / 2, ms / 1.8,
        )  # fmt: skip
        frame.loc[best, ["params", "size_mb"]] = (mib * 2**18, mib)
    folder.mkdir()
    record = {"study": _study().to_dict(), "resources": {"gpus_per_trial": 0.5}, "data": DATA}
    (folder / "sweep.json").write_text(json.dumps(record))
    frame.to_csv(folder / "results.csv", index=False)
    classes, rng = DATA["2"]["classes"], np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    preds = {"labels": labels}
    for trial, val in zip(frame["trial"], frame["val_accuracy"]):  # better on validation, better on test
        right = rng.random(len(labels)) < val
        pred = np.where(right, labels, (labels + 1) % 4)
        preds |= {f"{trial}/labels": labels, f"{trial}/probs": 0.1 + 0.6 * np.eye(4)[pred]}
    best = frame.loc[frame["val_accuracy"].idxmax()]
    winner, history = best["trial"], (folder / f"{best['trial']}-{best['trial_id']}")
    history.mkdir()
    curve = {"epoch": range(1, 7), "train_accuracy": np.linspace(0.3, 0.7, 6), "val_accuracy": np.linspace(0.3, 0.6, 6)}
    pd.DataFrame(curve | {"train_loss": np.linspace(1.3, 0.4, 6), "val_loss": np.linspace(1.3, 0.6, 6)}).to_csv(
        history / "progress.csv", index=False
    )
    cm = np.zeros((4, 4), int)
    np.add.at(cm, (labels, preds[f"{winner}/probs"].argmax(1)), 1)
    per_class = {c: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 10, "roc_auc": 0.95} for c in classes}
    details = {winner: {"per_class": per_class, "confusion_matrix": cm.tolist(), "ece": 0.05}}
    (folder / "results.json").write_text(json.dumps(details))
    np.savez(folder / "predictions.npz", **preds)
    return folder


class _Headings(HTMLParser):
    def __init__(self):
        super().__init__()
        self.titles, self._open = [], False

    def handle_starttag(self, tag, attrs):
        self._open = tag in ("h1", "h2")
        if self._open:
            self.titles.append("")

    def handle_endtag(self, tag):
        self._open = False

    def handle_data(self, data):
        if self._open:
            self.titles[-1] += data


def _titles(text: str, fmt: str) -> list[str]:
    """Section titles, in order, read back from one rendering."""
    if fmt == "md":
        return [m.group(2) for m in re.finditer(r"^(#{1,2}) (.+)$", text, re.M)]
    if fmt == "html":
        parser = _Headings()
        parser.feed(text)
        return parser.titles
    found = re.findall(r"^\\(?:title|section)\{(.+)\}$", text, re.M)
    return [re.sub(r"\\([_&%$#{}])", r"\1", t) for t in found]


def test_markdown_html_and_latex_carry_the_same_sections_tables_and_figures(tmp_path):
    from search.outputs.report import write_report

    out = write_report(_experiment(tmp_path / "exp"), tmp_path / "report")
    for name in ("axis_effects", "parallel_coordinates"):  # what mattered, drawn: every trial, the winner marked
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000, name
    text = {fmt: (out / f"report.{fmt}").read_text() for fmt in ("md", "html", "tex")}
    titles = {fmt: _titles(t, fmt) for fmt, t in text.items()}
    assert titles["md"] == titles["html"] == titles["tex"]
    winner = _frame().sort_values("val_accuracy").iloc[-1]["trial"]
    assert titles["md"][0] == "Sweep report: exp" and titles["md"][-3:-1] == ["Cost", DEPLOYMENT]
    for title in (
        "Is the winner really better? (test split)",
        "Calibration of the best classifier",
        "Compared with the study's published figures (same configuration)",
        "inception_resnet_v2 / option 2",
        f"Best classifier per class (test split): {winner}",
        "What mattered: importance of the searched axes for val_accuracy",
    ):
        assert title in titles["md"], title
    tables = {
        "md": len(re.findall(r"^\|:?-", text["md"], re.M)),
        "html": text["html"].count("<table"),
        "tex": text["tex"].count("\\begin{tabular}"),
    }
    figures = {"md": text["md"].count("!["), "html": text["html"].count("<img "), "tex": text["tex"].count("graphics")}
    # 2 trust, summary, importance, versus, 2 families, class, 2 cost, deployment
    assert tables["md"] == tables["html"] == tables["tex"] == 11
    for fmt, t in text.items():  # what mattered: a sentence and its table in every format
        assert "What mattered most: " in t and "fANOVA" in t and "PED-ANOVA" in t, fmt
    names = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert figures["md"] == figures["html"] == figures["tex"] == len(names) == 8, names
    deployment = pd.read_csv(out / "deployment.csv")  # each architecture's best, fastest first; both on the front
    assert list(deployment["trial"]) == ["inception_resnet_v2-opt2-lr0.01-do0.4", "nasnet_large-opt2-lr0.01-do0.4"]
    assert list(deployment["latency_ms"]) == [41.5, 120.25] and list(deployment["pareto_front"]) == ["yes", "yes"]
    for fmt, t in text.items():
        assert "2 of the 2 candidates are on the Pareto front of " in t and "120.25" in t, fmt
    for fmt, t in text.items():  # what the HTML once lacked: the task line and the note on fractions
        assert "Task: classification." in t and "percentages are divided by 100" in t, fmt
    assert "<strong>" not in text["html"] and "**" not in text["html"]  # a leak-free sweep: no warning in bold


def test_reading_results_imports_neither_ray_nor_a_framework_nor_the_image_stack(tmp_path):
    """`sweep report` and `sweep ls` of a finished sweep (its recorded study validated again) in a fresh interpreter."""
    import subprocess
    import sys

    experiment = _experiment(tmp_path / "exp")
    heavy = ("ray", "ray.tune", "keras", "tensorflow", "jax", "torch", "cv2", "albumentations")
    code = (
        "import sys\nfrom search.cli import main\n"
        f"assert main(['report', {str(experiment)!r}, '--out', {str(tmp_path / 'r')!r}]) == 0\n"
        f"assert main(['ls', '--storage', {str(tmp_path)!r}]) == 0\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr[-2000:]
    assert (tmp_path / "r" / "report.html").is_file()


def test_the_headline_puts_the_winner_next_to_a_model_that_learned_nothing():
    from search.outputs.headline import lines, outcome

    frame = _frame()
    data = {"2": DATA["2"] | {"splits": {"test": {"per_class": [10, 20, 30, 40]}}}}
    o = outcome(frame, _study(), data)
    assert o["winner"] == "nasnet_large-opt2-lr0.01-do0.4" and o["validation"] == {"val_accuracy": pytest.approx(0.69)}
    assert o["test"]["accuracy"] == pytest.approx(0.67)
    assert o["baseline"] == {"accuracy": pytest.approx(0.4), "f1": pytest.approx(2 * 0.4 / 1.4 / 4)}
    assert (o["trials"], o["stopped"]) == (24, 6)
    assert o["saved_seconds"] == pytest.approx(24 * 60.0 - frame["wall_seconds"].sum())
    text = lines(o, "r/report.html")
    assert text[0] == "winner (chosen on val_accuracy = 0.6900): nasnet_large-opt2-lr0.01-do0.4"
    assert "always the most frequent class: accuracy 0.4000" in text[1] and text[-1] == "report: r/report.html"
    assert text[2].startswith("What mattered most: ")  # 24 trials over four axes: ranked


def test_importance_ranks_the_axis_that_decides_the_metric_or_says_why_not():
    """A grid where the learning rate decides validation accuracy, the model adds a little and dropout and the option
    nothing (noise): both evaluators rank lr first, their shares sum to 1; the headline names it. Too few trials, or
    one axis searched: no numbers, a reason instead."""
    import itertools

    from search.outputs.importance import MIN_TRIALS, importance, sentence, table

    rng = np.random.default_rng(0)
    rows = [
        {"model": m, "option": o, "lr": lr, "dropout": d, "repeat": 0, "val_accuracy": 0.5 + 0.3 * (lr == 1e-3)
         + 0.05 * (m == "nasnet_large") + rng.normal(0, 0.01)}
        for m, o, lr, d in itertools.product(("inception_resnet_v2", "nasnet_large"), (1, 2),
                                             (0.1, 0.01, 1e-3, 1e-4), (0.4, 0.2, 0.0))
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    result = importance(frame, "val_accuracy", "max")
    assert result["why_not"] is None and result["trials"] == 48
    assert set(result["axes"]) == {"model", "option", "lr", "dropout"}  # repeat is not an axis
    for key in ("fanova", "ped_anova"):
        assert max(result[key], key=result[key].get) == "lr", result[key]
        assert sum(result[key].values()) == pytest.approx(1)
    assert result["axes"][:2] == ["lr", "model"]
    assert list(table(result)["axis"]) == result["axes"]
    assert sentence(result).startswith("What mattered most: lr, 0.")

    few = importance(frame.head(MIN_TRIALS - 1), "val_accuracy", "max")
    assert few["why_not"].startswith(f"{MIN_TRIALS - 1} trials") and not few["fanova"]
    one_axis = frame[(frame["model"] == "nasnet_large") & (frame["option"] == 1) & (frame["dropout"] == 0.0)]
    one_axis = pd.concat([one_axis] * 2)  # enough trials, one axis searched
    assert importance(one_axis, "val_accuracy", "max")["why_not"] == "only lr was searched: nothing to rank it against"
    assert importance(frame.assign(val_accuracy=np.nan), "val_accuracy", "max")["trials"] == 0  # never scored


def test_effects_per_axis_show_the_spread_over_repeats_and_folds(tmp_path):
    """Repeats: each configuration's mean ± std; cross-validation: each trial's spread over its folds; the caption
    says which the figure shows, and neither without them."""
    from search.outputs.report.figures import Figures, plot_axis_effects

    frame = _frame()
    captions = {}
    for name, part in {
        "plain": frame,
        "repeats": pd.concat(
            [frame.assign(repeat=0), frame.assign(repeat=1, val_accuracy=frame["val_accuracy"] - 0.02)]
        ),
        "folds": frame.assign(val_accuracy_std=0.03),
    }.items():
        figs = Figures(tmp_path / name)
        plot_axis_effects(figs, part.reset_index(drop=True), ["lr", "dropout"], "val_accuracy", "max")
        assert (tmp_path / name / "axis_effects.png").stat().st_size > 5000
        captions[name] = figs.items[0][1]
    assert "repeats" not in captions["plain"] and "folds" not in captions["plain"]
    assert "over repeats" in captions["repeats"] and "folds" in captions["folds"]


def test_sentences_keep_their_marks_and_are_escaped_in_every_format():
    from search.outputs.report.document import Note, Section, render

    doc = [Section("a_b", level=1, bullets=("**WARNING: the `study` protocol** <5% & a_b",), blocks=(Note("x~y"),))]
    md, html, tex = (render(doc, fmt) for fmt in ("md", "html", "tex"))
    assert "- **WARNING: the `study` protocol** <5% & a_b" in md
    assert "<li><strong>WARNING: the <code>study</code> protocol</strong> &lt;5% &amp; a_b</li>" in html
    assert r"\item \textbf{WARNING: the \texttt{study} protocol} <5\% \& a\_b" in tex
    assert r"\title{a\_b}" in tex and r"x\textasciitilde{}y" in tex


def test_a_sweep_never_timed_gets_a_deployment_section_that_says_how_to_time_it():
    from search.outputs.report.document import DEPLOYMENT_NONE, _deployment_section

    table = tables.deployment_table(_frame(), "val_accuracy", "max")  # no cost columns at all
    assert table.empty and "pareto_front" in table.columns
    section = _deployment_section(table, _study())
    assert section.lead == (DEPLOYMENT_NONE,) and not section.blocks and "sweep costs" in DEPLOYMENT_NONE
    assert section.title == DEPLOYMENT
    from search.study.spec import load_study  # a search for size: the section is about size

    search = {"algorithm": "optuna", "num_samples": 2, "objectives": ["val_accuracy", "size_mb"]}
    sized = load_study("classification", "smoke", {"search": search})
    assert _deployment_section(table, sized).title == "Deployment: validation metric against the ONNX file's size"
