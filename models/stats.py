"""Trust: paired comparisons on one test split, calibration. Pure functions over arrays; scipy does the statistics.

Paired comparisons (two models scored on the same test images):
- classification: McNemar's exact test on the discordant correct/incorrect pairs (a binomial test, as statsmodels'
  ``mcnemar(exact=True)``), and paired bootstrap 95% intervals of the accuracy and macro-F1 differences;
- segmentation: a paired bootstrap 95% interval of the mean per-image Dice difference, and the Wilcoxon signed-rank
  test on the per-image Dice pairs.
A difference is called real when the test's p < ``ALPHA`` and the interval excludes 0; otherwise the two models are
"not distinguishable on this test set".

Calibration: expected calibration error (``ECE_BINS`` equal-width confidence bins), the reliability table behind a
reliability diagram, and temperature scaling (one scalar T fitted by maximum likelihood on validation;
softmax(log p / T) equals softmax(z / T) for the logits z, so it works on the model's probabilities).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 10_000
SEED = 0
ECE_BINS = 15
_EPS = 1e-12


# ---- paired comparisons ---------------------------------------------------------------------------------------------


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test: b = images only A gets right, c = images only B gets right; two-sided p of b under
    Binomial(b + c, 1/2). p = 1 when the two never disagree."""
    from scipy.stats import binomtest

    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"only_a": b, "only_b": c, "p": p}


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro F1 along the last axis (leading axes are batches of resamples), as scikit-learn's
    ``f1_score(average="macro", labels=range(n_classes), zero_division=0)``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    lead = y_true.shape[:-1]
    rows = np.arange(int(np.prod(lead, dtype=int)))[:, None] * n_classes
    flat_t, flat_p = (rows + y_true.reshape(len(rows), -1)).ravel(), (rows + y_pred.reshape(len(rows), -1)).ravel()
    size = len(rows) * n_classes
    tp = np.bincount(flat_t[flat_t == flat_p], minlength=size)
    true, pred = np.bincount(flat_t, minlength=size), np.bincount(flat_p, minlength=size)
    f1 = np.where(true + pred > 0, 2 * tp / np.maximum(true + pred, 1), 0.0).reshape(len(rows), n_classes)
    return f1.mean(-1).reshape(lead)


def paired_bootstrap(statistic, *arrays: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """``statistic(*arrays)`` on the observed images, and its percentile ``CONFIDENCE`` interval over
    ``n_resamples`` paired resamples of the images (the same images for every array). ``statistic`` takes
    arrays whose last axis is the images and reduces it (it is called on batches of resamples)."""
    from scipy.stats import bootstrap

    observed = float(statistic(*arrays))
    if len(arrays[0]) < 2:
        return {"difference": observed, "low": float("nan"), "high": float("nan")}
    result = bootstrap(
        arrays,
        lambda *xs, axis=-1: statistic(*(np.moveaxis(x, axis, -1) for x in xs)),
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return {"difference": observed, "low": float(low), "high": float(high)}


def compare_classifiers(
    labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> dict[str, Any]:
    """A against B on the same test images: accuracy and macro-F1 differences (A − B) with paired bootstrap
    intervals, McNemar's p, and the verdict (on accuracy)."""
    labels = np.asarray(labels).astype(np.int64)
    pred_a, pred_b = np.asarray(probs_a).argmax(-1), np.asarray(probs_b).argmax(-1)
    k = int(max(np.asarray(probs_a).shape[-1], labels.max() + 1))
    pairs, kw = (labels, pred_a, pred_b), {"n_resamples": n_resamples, "seed": seed}
    acc = paired_bootstrap(lambda y, a, b: (a == y).mean(-1) - (b == y).mean(-1), *pairs, **kw)
    f1 = paired_bootstrap(lambda y, a, b: macro_f1(y, a, k) - macro_f1(y, b, k), *pairs, **kw)
    test = mcnemar(pred_a == labels, pred_b == labels)
    return {
        "metric": "accuracy",
        **acc,
        "p": test["p"],
        "test": "McNemar",
        "discordant": [test["only_a"], test["only_b"]],
        "f1": f1,
        "n": len(labels),
        "verdict": verdict(acc, test["p"]),
    }


def compare_segmenters(
    dice_a: np.ndarray, dice_b: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> dict[str, Any]:
    """A against B on the same test images: the mean per-image Dice difference (A − B) with a paired bootstrap
    interval, the Wilcoxon signed-rank p, and the verdict."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(dice_a, np.float64), np.asarray(dice_b, np.float64)
    diff = paired_bootstrap(lambda x, y: (x - y).mean(-1), a, b, n_resamples=n_resamples, seed=seed)
    p = 1.0 if np.allclose(a, b) else float(wilcoxon(a, b).pvalue)  # no non-zero difference: nothing to rank
    return {"metric": "per-image Dice", **diff, "p": p, "test": "Wilcoxon", "n": len(a), "verdict": verdict(diff, p)}


def verdict(interval: dict[str, float], p: float) -> str:
    """better | worse | indistinguishable: a real difference needs p < ALPHA and an interval that excludes 0."""
    if p < ALPHA and interval["low"] > 0:
        return "better"
    if p < ALPHA and interval["high"] < 0:
        return "worse"
    return "indistinguishable"


def sentence(name: str, result: dict[str, Any]) -> str:
    """Plain words: "better than X (difference 0.031, 95% CI 0.012–0.050, McNemar p = 0.004)" or
    "not distinguishable from X on this test set (…)"."""
    detail = (
        f"{result['metric']} difference {result['difference']:+.3f}, {CONFIDENCE:.0%} CI {_interval(result)}, "
        f"{result['test']} p = {result['p']:.3g}, n = {result['n']}"
    )
    if "f1" in result:
        detail += f"; macro-F1 difference {result['f1']['difference']:+.3f}, CI {_interval(result['f1'])}"
    lead = {
        "better": f"better than {name}",
        "worse": f"worse than {name}",
        "indistinguishable": f"not distinguishable from {name} on this test set",
    }[result["verdict"]]
    return f"{lead} ({detail})"


def _interval(d: dict[str, float]) -> str:
    return f"{d['low']:.3f}{' to ' if d['low'] < 0 else '–'}{d['high']:.3f}"  # "-0.027–0.095" reads as a range


# ---- calibration ----------------------------------------------------------------------------------------------------


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin ((0, 1/bins], ...): images, mean confidence, accuracy (NaN when empty)."""
    probs = np.asarray(probs, np.float64)
    conf, correct = probs.max(-1), (probs.argmax(-1) == np.asarray(labels)).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": count,
            "confidence": np.bincount(which, conf, bins) / count,
            "accuracy": np.bincount(which, correct, bins) / count,
        }


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: Σ over bins of (images in bin / all) × |accuracy − mean confidence|."""
    r = reliability(probs, labels, bins)
    used = r["count"] > 0
    return float((r["count"][used] * np.abs(r["accuracy"][used] - r["confidence"][used])).sum() / r["count"].sum())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens over-confident probabilities, T < 1 sharpens; argmax never changes."""
    z = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0)) / temperature
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the negative log-likelihood of ``labels`` (the validation split)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels).astype(np.int64)
    logp = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z -= z.max(-1, keepdims=True)
        return float(-(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(-1))).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))
