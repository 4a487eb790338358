"""The report as one document: an ordered list of sections (title, lead sentences, tables, figures, notes), built
once from the report's parts and rendered to Markdown, HTML and LaTeX through jinja2 templates (package data in
``templates/``). Every format walks the same list, so none can say more or less than another."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import pandas as pd
from markupsafe import Markup

from search.outputs import importance
from search.outputs.deploy import LATENCY_RUNS
from search.outputs.report.tables import trust_lines
from search.study.spec import COST_OBJECTIVES, Study

TEMPLATES = {"md": "report.md.j2", "html": "report.html.j2", "tex": "report.tex.j2"}
BOOTSTRAP_NOTE = (
    "Paired on the same test images; 95% percentile intervals from 10,000 paired bootstrap resamples (seed 0); "
    "a difference counts when p < 0.05 and the interval excludes 0."
)
TTA_NOTE = "Mean of the model's outputs over flips and 90° rotations, before thresholding."
BASELINES_NOTE = (
    "`hsv_threshold`: an HSV window from the training masks' foreground (the leukemia study's traditional approach); "
    "`kmeans`: K-means on grey levels, k by silhouette, the brightest cluster. Fitted on the training split only."
)
BINARY_NOTE = (
    "Sensitivity is the positive class's recall, specificity the negative class's; the threshold is on the positive "
    "class's probability, Youden's J (sensitivity + specificity - 1) maximised on the validation split."
)
FRACTIONS_NOTE = "Fractions; the study's percentages are divided by 100."
IMPORTANCE_NOTE = (
    "fANOVA: the share of the metric's variance over the searched space that each axis explains on its own (a random "
    "forest fitted to the trials; Optuna's FanovaImportanceEvaluator, seed 0). PED-ANOVA: how far each axis's values "
    "among the best 10% of trials differ from all trials' (Optuna's PedAnovaImportanceEvaluator). Each column sums "
    "to 1. A grid tries every value equally often; an adaptive search (Optuna) samples where it expects good trials, "
    "which both estimates inherit."
)

DEPLOYMENT_NOTE = (
    "Candidates: each architecture's best trial on validation (trials of one architecture cost the same). Each is "
    "assembled as `sweep export` assembles it, converted to ONNX and run by ONNX Runtime at batch 1 on a random image "
    "of the input size, on the CPU of the machine that timed it (`search.costs` or `sweep costs`, or a trial as it "
    "built its model, `search.objectives`): median and 95th percentile of "
    f"{LATENCY_RUNS} runs after 2 warm-up runs, on one thread (`latency_ms`, what a budget is checked against) "
    "and on all cores. `size_mb`: the float32 ONNX file, MiB. On the front: no other candidate is at least as cheap "
    "and at least as good, and better in one."
)
SEARCHED_FOR = (
    "The search optimized two objectives, {objectives} (`search.objectives`: Optuna's multi-objective TPE through Ray "
    "Tune, told each trial's best epoch; no trial stopped early). Each architecture's cost was measured as a trial "
    "built it, once per machine, while other trials trained beside it; `search.costs` or `sweep costs` time the "
    "candidates again, alone, and their figures replace these. The front is of {metric} against {cost}."
)
DEPLOYMENT_NONE = (
    "No candidate was timed: `sweep costs EXPERIMENT` times each architecture's best trial on the machine it runs on "
    "(or `search.costs: true` in the study, when the sweep ends)."
)


@dataclass(frozen=True)
class Table:
    """A table; ``highlight`` marks the row whose note says it was chosen (HTML shows it in bold on yellow)."""

    frame: pd.DataFrame
    highlight: bool = False
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Figure:
    """A PNG in the report's ``figures/`` folder."""

    path: Path
    caption: str
    kind: ClassVar[str] = "figure"

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class Note:
    """A sentence below a section's tables."""

    text: str
    kind: ClassVar[str] = "note"


@dataclass(frozen=True)
class Section:
    """A heading (level 1: the report's title, 2: a section) and what stands under it, in order: lead paragraphs,
    bullet sentences, then tables, figures and notes."""

    title: str
    level: int = 2
    lead: tuple[str, ...] = ()
    bullets: tuple[str, ...] = ()
    blocks: tuple[Table | Figure | Note, ...] = ()


# ---- the document ---------------------------------------------------------------------------------------------------


def sections(parts: dict[str, Any]) -> list[Section]:
    """The whole report, in reading order, from ``build``'s parts."""
    task_line = f"Task: {parts['task']}. Selection on validation only; test numbers played no part in choosing."
    out = [
        Section(
            f"Sweep report: {Path(parts['experiment']).name}",
            level=1,
            lead=(task_line,),
            bullets=tuple(trust_lines(parts["trust"])),
        )
    ]
    out += _trust_sections(parts)
    out.append(Section("Best per family (chosen on validation)", blocks=(Table(parts["summary"]),)))
    out.append(_importance_section(parts["importance"]))
    out.append(
        Section(
            "Compared with the study's published figures (same configuration)",
            blocks=(Table(parts["versus"]), Note(FRACTIONS_NOTE)),
        )
    )
    out += [Section(title, blocks=(Table(frame, highlight=True),)) for title, frame in parts["tables"].items()]
    if parts["baselines"] is not None:
        title = "What training adds: classical baselines beside each model's best (test split)"
        out.append(Section(title, bullets=(BASELINES_NOTE,), blocks=(Table(parts["baselines"]),)))
    if parts["per_class"] is not None:
        title = f"Best classifier per class (test split): {parts['best_trial']}"
        out.append(Section(title, blocks=(Table(parts["per_class"]),)))
    if parts["binary"] is not None:
        title = f"Best classifier, positive class {parts['binary_positive']!r} (test split)"
        out.append(Section(title, bullets=(BINARY_NOTE,), blocks=(Table(parts["binary"]),)))
    if len(parts["unscored"]):
        lead = ("Trained, but their best checkpoint could not be scored on the test split; never chosen as best.",)
        out.append(Section("Trials whose test scoring failed", lead=lead, blocks=(Table(parts["unscored"]),)))
    out.append(Section("Cost", blocks=(Table(parts["totals"]), Table(parts["cost"]))))
    out.append(_deployment_section(parts["deployment"], parts["study"]))
    figs = parts["figures"]
    out.append(Section("Figures", blocks=tuple(Figure(figs.folder / f"{n}.png", c) for n, c in figs.items)))
    return out


def _importance_section(result: dict[str, Any]) -> Section:
    """What mattered: the axes ranked, or why the sweep cannot rank them."""
    title = f"What mattered: importance of the searched axes for {result['metric']}"
    if result["why_not"] is not None:
        return Section(title, lead=(importance.sentence(result),))
    blocks = (Table(importance.table(result)), Note(IMPORTANCE_NOTE))
    return Section(title, lead=(importance.sentence(result),), blocks=blocks)


def _deployment_section(table: pd.DataFrame, study: Study) -> Section:
    """What each architecture's best trial costs to run, and the Pareto front of the metric against latency (or
    against the cost a search for two objectives minimized)."""
    metric, cost = study.metric, study.front_cost
    _, words, budget = COST_OBJECTIVES[cost]
    title = f"Deployment: validation metric against {words}"
    if table.empty:
        return Section(title, lead=(DEPLOYMENT_NONE,))
    front = table[table["pareto_front"] == "yes"]
    lead = (
        f"{len(front)} of the {len(table)} candidates are on the Pareto front of {metric} against {cost}: for a "
        f"budget, the best choice is the front's costliest that fits it (`sweep export {budget}`).",
    )
    if study.cost_objective:
        names = ", ".join(f"{n} ({m})" for n, m in study.objectives)
        lead += (SEARCHED_FOR.format(objectives=names, metric=metric, cost=cost),)
    return Section(title, lead=lead, blocks=(Table(table), Note(DEPLOYMENT_NOTE)))


def _trust_sections(parts: dict[str, Any]) -> list[Section]:
    """The trust sections that have something to say: paired comparisons, calibration, test-time augmentation."""
    out = []
    if parts["sentences"]:
        out.append(
            Section(
                "Is the winner really better? (test split)",
                bullets=(*parts["sentences"], BOOTSTRAP_NOTE),
                blocks=_nonempty(parts["comparisons"]),
            )
        )
    if parts["calibration"] is not None:
        out.append(Section("Calibration of the best classifier", blocks=_nonempty(parts["calibration"])))
    if parts["tta"] is not None:
        title = "Test-time augmentation (best per family, test split)"
        out.append(Section(title, bullets=(TTA_NOTE,), blocks=_nonempty(parts["tta"])))
    return out


def _nonempty(frame: pd.DataFrame) -> tuple[Table, ...]:
    return (Table(frame),) if len(frame) else ()


# ---- rendering ------------------------------------------------------------------------------------------------------


def render(doc: list[Section], fmt: str) -> str:
    """The document in ``fmt`` (md, html or tex)."""
    return _environment(fmt).get_template(TEMPLATES[fmt]).render(sections=doc).rstrip() + "\n"


@cache
def _environment(fmt: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("search.outputs.report", "templates"),
        autoescape=fmt == "html",
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(table=_TABLE[fmt], inline=_INLINE[fmt], data_uri=_data_uri, tex=_tex_escape)
    return env


def _md_table(table: Table) -> str:
    """Markdown table: numbers to 4 decimals, missing values as –, text cells (such as "0.01", "0.6800 ± 0.0100")
    kept exactly as written."""
    frame = table.frame
    cells = frame.astype(object).where(frame.notna(), None)
    for col in frame.select_dtypes("number").columns:
        cells[col] = [None if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in cells[col]]
    return cells.to_markdown(index=False, disable_numparse=True, missingval="–")


def _html_table(table: Table) -> Markup:
    """HTML table; a highlighted table goes through pandas' Styler, which marks the chosen row's every cell."""
    if not table.highlight:
        out = table.frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="–", border=0, classes="t")
        return Markup(out)
    styled = table.frame.style.apply(
        lambda r: ["background:#fff3b0;font-weight:bold" if "chosen" in r["note"] else "" for _ in r], axis=1
    )
    return Markup(styled.hide(axis="index").set_table_attributes('class="t"').to_html())


def _tex_table(table: Table) -> str:
    return table.frame.to_latex(index=False, float_format="%.4f", na_rep="--", escape=True)


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(c, c) for c in str(text))


def _markup(text: str, bold: str, code: str) -> str:
    """The report's sentences use two marks from Markdown: **bold** and `code`."""
    text = re.sub(r"\*\*(.+?)\*\*", bold, text)
    return re.sub(r"`(.+?)`", code, text)


def _html_inline(text: str) -> Markup:
    return Markup(_markup(html.escape(text, quote=False), r"<strong>\1</strong>", r"<code>\1</code>"))


def _tex_inline(text: str) -> str:
    return _markup(_tex_escape(text), r"\\textbf{\1}", r"\\texttt{\1}")


def _data_uri(path: Path) -> str:
    return f"data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


_TABLE = {"md": _md_table, "html": _html_table, "tex": _tex_table}
_INLINE = {"md": str, "html": _html_inline, "tex": _tex_inline}
