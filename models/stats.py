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

import warnings
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


def bootstrap(statistic, *arrays: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED, batch=None):
    """(observed, low, high): ``statistic(*arrays)`` on the observed images and its percentile ``CONFIDENCE``
    interval over ``n_resamples`` paired resamples of the images (the same images for every array; NaN with fewer
    than 2). ``statistic`` takes arrays whose last axis is the images and reduces it (it is called on batches of
    resamples); it may return one value or several (then three arrays). ``batch``: resamples per call, to bound
    memory."""
    from scipy.stats import bootstrap as scipy_bootstrap

    observed = np.asarray(statistic(*arrays), np.float64)
    if len(arrays[0]) < 2:
        return observed, np.full_like(observed, np.nan), np.full_like(observed, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without some class: that metric is NaN there
        result = scipy_bootstrap(
            arrays,
            lambda *xs, axis=-1: statistic(*(np.moveaxis(x, axis, -1) for x in xs)),
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            batch=batch,
            confidence_level=CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return observed, np.asarray(low, np.float64), np.asarray(high, np.float64)


def paired_bootstrap(statistic, *arrays: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """A difference between two models on the same images (``bootstrap`` of one value)."""
    observed, low, high = bootstrap(statistic, *arrays, n_resamples=n_resamples, seed=seed)
    return {"difference": float(observed), "low": float(low), "high": float(high)}


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
    """Per equal-width confidence bin ((0, 1/bins], ...): images, mean confidence, accuracy (NaN when empty).
    ``probs`` (..., n, classes) and ``labels`` (..., n): leading axes are batches (of bootstrap resamples)."""
    probs = np.asarray(probs, np.float64)
    conf, correct = probs.max(-1), (probs.argmax(-1) == np.asarray(labels)).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    lead = conf.shape[:-1]
    rows = np.arange(int(np.prod(lead, dtype=int)))[:, None] * bins  # each batch row its own run of bins
    flat, size = (rows + which.reshape(len(rows), -1)).ravel(), len(rows) * bins

    def per_bin(weights=None) -> np.ndarray:
        w = None if weights is None else weights.ravel()
        return np.bincount(flat, w, minlength=size).reshape(*lead, bins)

    count = per_bin()
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "confidence": per_bin(conf) / count, "accuracy": per_bin(correct) / count}


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS):
    """Expected calibration error: Σ over bins of (images in bin / all) × |accuracy − mean confidence| (a float;
    one per batch row when ``probs`` has leading axes)."""
    r = reliability(probs, labels, bins)
    gap = np.where(r["count"] > 0, np.abs(r["accuracy"] - r["confidence"]), 0.0)
    out = (r["count"] * gap).sum(-1) / r["count"].sum(-1)
    return float(out) if np.ndim(out) == 0 else out


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


# ---- one model's metrics with intervals ------------------------------------------------------------------------------

INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "ece")  # report keys; f1 is macro F1


def _macro_auroc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class from ranks (Mann-Whitney U: the trapezoid AUC, ties counted half), averaged
    over the classes with positives and negatives (NaN when none has), as the report's ``roc_auc``."""
    from scipy.stats import rankdata

    n = labels.shape[-1]
    aucs = []
    for c in range(probs.shape[-1]):
        pos = labels == c
        n_pos = pos.sum(-1)
        u = (rankdata(probs[..., c], axis=-1) * pos).sum(-1) - n_pos * (n_pos + 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(np.where((n_pos > 0) & (n_pos < n), u / (n_pos * (n - n_pos)), np.nan))
    return np.nanmean(np.stack(aucs), axis=0)


def _balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean recall over the classes present (scikit-learn's ``balanced_accuracy_score``)."""
    recalls = []
    for c in range(n_classes):
        pos = labels == c
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(pos.any(-1), (pos & (predicted == c)).sum(-1) / pos.sum(-1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


def classifier_metrics(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``INTERVAL_METRICS`` of probabilities (..., n, classes) against labels (..., n), in that order (pure,
    batched over leading axes)."""
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    k, predicted = probs.shape[-1], probs.argmax(-1)
    return np.stack(
        [
            (predicted == labels).mean(-1),
            _balanced_accuracy(labels, predicted, k),
            macro_f1(labels, predicted, k),
            _macro_auroc(labels, probs),
            np.asarray(ece(probs, labels)),
        ]
    )


def classifier_intervals(
    labels: np.ndarray, probs: np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> dict[str, dict[str, float]]:
    """Each of ``INTERVAL_METRICS`` with its percentile bootstrap ``CONFIDENCE`` interval over the images:
    {metric: {"value", "low", "high"}}."""
    labels, probs = np.asarray(labels).astype(np.int64), np.asarray(probs, np.float64)
    batch = max(1, 4_000_000 // max(1, probs.size))  # resamples per call: bounded memory on large sets
    value, low, high = bootstrap(
        lambda i: classifier_metrics(labels[i], probs[i]),
        np.arange(len(labels)),
        n_resamples=n_resamples,
        seed=seed,
        batch=batch,
    )
    return {
        m: {"value": float(v), "low": float(lo), "high": float(hi)}
        for m, v, lo, hi in zip(INTERVAL_METRICS, value, low, high, strict=True)
    }
