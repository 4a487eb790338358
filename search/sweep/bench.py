"""``sweep bench``: three ways of running the same trials, one after the other, on the same data and machine, in one
invocation.

(a) the study's way: one trial after another, every epoch (no early stopping), float32, no feature or compile cache;
(c) Ray Tune used by hand, the rival a user would otherwise pick: the same trials side by side with ASHA, but float32,
    no feature cache, no compile cache, and each trial reading and decoding its own images from disk;
(b) the service's way: the study as ``sweep run`` runs it: trials side by side, ASHA, frozen-backbone feature cache,
    JAX compile cache, data decoded once and shared zero-copy, bf16 on GPUs that have it.

Scale options (fraction of the trials, epochs, image size) make it fit a short window; a scaled run's time for (a)
extrapolates to the full study linearly in trials, epochs and images and quadratically in image side
(``full_scale``). ``--data-scale`` (default 8) multiplies a sized synthetic set (the smoke presets'), so that
validation holds enough images for the trials to differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from data_pipeline.files import write_file
from search.study.experiment import check_name
from search.study.results import TRIAL_PHASES, best_by, config_label
from search.study.spec import SpecError, Study, load_study, merge

STUDY_WAY, BY_HAND, SERVICE_WAY = "study's way", "Ray Tune by hand", "service's way"
WAYS = (STUDY_WAY, BY_HAND, SERVICE_WAY)
SLUGS = {STUDY_WAY: "study-way", BY_HAND: "by-hand", SERVICE_WAY: "service-way"}  # each way's experiment folder
SHRINK = ("dropout", "lr", "option")  # axes a scaled run thins out, largest first; every model always stays


def _centered(values: list, k: int) -> list:
    """k consecutive values from the middle of an axis (lr 0.1..0.0001, k=2: 0.01, 0.001)."""
    start = (len(values) - k) // 2
    return values[start : start + k]


def trial_count(study: Study) -> int:
    """Trials a study runs: the grid's size (or num_samples for random/Optuna) × repeats."""
    n = study.search.num_samples * study.search.repeats
    if study.search.algorithm == "grid":
        n *= math.prod(len(v) for v in study.space.values() if isinstance(v, list))
    return n


def scale_overrides(
    study: Study,
    *,
    fraction: float = 1.0,
    epochs: int | None = None,
    image_size: int | None = None,
    data_scale: int = 1,
):
    """Overrides that scale ``study`` down: about ``fraction`` of its trials (every model kept, the other grid axes
    thinned from their middle), ``epochs`` per trial (ASHA's grace period scaled alike), ``image_size`` pixels; and
    up: ``data_scale`` times the images per class of a built-in synthetic set the study sizes itself
    (``data.synthetic_counts``, and ``data.balance_to`` alike), so that validation holds enough images for trials to
    differ. A user's data folder, or a synthetic set at its default size, is used as it is."""
    if not 0 < fraction <= 1:
        raise SpecError(f"--fraction must be in (0, 1], got {fraction}")
    if data_scale < 1:
        raise SpecError(f"--data-scale must be an integer >= 1, got {data_scale}")
    over: dict[str, Any] = {}
    if study.search.algorithm == "grid":
        space = dict(study.space)
        target = max(1, round(fraction * trial_count(study)))
        keep = {a: len(space[a]) for a in SHRINK if isinstance(space.get(a), list)}
        rest = trial_count(study) // math.prod(keep.values())  # models, repeats: never thinned
        while rest * math.prod(keep.values()) > target:
            axis = max((a for a in keep if keep[a] > 1), key=keep.get, default=None)  # ties: SHRINK's order
            if axis is None:
                break
            keep[axis] -= 1
        over["space"] = {**space, **{a: _centered(space[a], k) for a, k in keep.items()}}
    else:
        over["search"] = {"num_samples": max(1, round(fraction * study.search.num_samples))}
    if epochs is not None:
        grace = max(1, min(epochs, round(study.scheduler.grace_period * epochs / study.train.epochs)))
        over |= {"train": {"epochs": epochs}, "scheduler": {"grace_period": grace}}
    data = study.data
    if image_size is not None:
        over["data"] = {"image_size": image_size}
    if data_scale > 1 and data.data_dir is None and data.synthetic_counts:
        over.setdefault("data", {})["synthetic_counts"] = [n * data_scale for n in data.synthetic_counts]
        if data.balance_to:
            over["data"]["balance_to"] = data.balance_to * data_scale
    return over


def study_way_overrides(study: Study) -> dict[str, Any]:
    """What turns the service's way of running ``study`` into the study's own: sequential, all epochs, no caches."""
    return {
        "train": {"feature_cache": False, "compile_cache": False, "trial_threads": False, "mixed_precision": None},
        "resources": {"max_concurrent_trials": 1},
        "scheduler": {"grace_period": study.train.epochs},  # ASHA with grace = max epochs never stops a trial
    }


def by_hand_overrides() -> dict[str, Any]:
    """What turns the service's way into Ray Tune used by hand: the same parallel trials and ASHA, without the
    service's levers (float32, no feature cache, no compile cache, TensorFlow's thread pools as they come; the data
    part is ``ReadInTrial``)."""
    train = {"feature_cache": False, "compile_cache": False, "trial_threads": False, "mixed_precision": None}
    return {"train": train}


class ReadInTrial(Mapping):
    """Loading option -> data, read the way a hand-written trainable reads it: inside each trial, from the image
    files, decoded anew (a fresh decode cache per read), instead of decoded once and shared through the object store.
    Same files, same seeds: the same splits as the other ways."""

    def __init__(self, configs: dict[int, Any]):
        self.configs = configs

    def __getitem__(self, option: int):
        from data_pipeline import prepare

        with tempfile.TemporaryDirectory(prefix="sweep-bench-read-") as cache:
            return prepare(self.configs[option], cache_dir=cache)

    def __iter__(self) -> Iterator[int]:
        return iter(self.configs)

    def __len__(self) -> int:
        return len(self.configs)


def full_scale(full: Study, scaled: Study) -> float:
    """How much longer the full study takes run the study's way: trials × epochs × images × pixels (compute per
    image grows with the pixel count for these convolutional models)."""
    return (
        trial_count(full) / trial_count(scaled)
        * full.train.epochs / scaled.train.epochs
        * _images(full) / _images(scaled)
        * (full.data.image_size / scaled.data.image_size) ** 2
    )  # fmt: skip


def _images(study: Study) -> int:
    """The images per epoch, where the study sizes them (a balanced training split, or a sized synthetic set); 1
    otherwise (the same data in both studies)."""
    return study.data.balance_to or sum(study.data.synthetic_counts) or 1


def _total(frame: pd.DataFrame, col: str, kind=float):
    """A column summed over trials; None when no trial recorded it."""
    return kind(frame[col].sum()) if col in frame and frame[col].notna().any() else None


def breakdown(frame: pd.DataFrame, timings: dict[str, float]) -> dict[str, float | None]:
    """Where one way's time went, in order: the driver's start-up, the trials' own phases summed over trials (trials
    run side by side, so these sums can exceed the trials phase's wall time), the trials phase's wall time, test
    scoring, finalize (Grad-CAM or baselines, then writing the results). ``timings``: the experiment's timings.json.
    None where nothing was recorded."""
    finalize = [timings[p] for p in ("extras", "costs", "results") if p in timings]
    return {
        "start_up_seconds": timings.get("start_up"),
        **{f"{col}_summed": _total(frame, col) for col in TRIAL_PHASES},
        "trials_seconds": timings.get("trials"),
        "test_scoring_seconds": timings.get("test_scoring"),
        "finalize_seconds": sum(finalize) if finalize else None,
    }


def way_summary(
    frame: pd.DataFrame,
    wall: float,
    train_sizes: dict[int, int],
    busy: float | None,
    timings: dict[str, float],
    metric: str,
    mode: str = "max",
):
    """One way's row: the time breakdown (``breakdown``) and wall time, epochs, training images per second of wall
    time, first-epoch overheads, cache hits, GPU busy %, the configuration it picks (highest validation metric:
    never test) and how many trials share that best value."""
    options = frame["option"] if "option" in frame else pd.Series([next(iter(train_sizes))] * len(frame))
    images = float((frame["epochs"] * options.map(lambda o: train_sizes[int(o)]).to_numpy()).sum())
    ranked = best_by(frame, metric, mode)
    best = None if ranked.empty else ranked.iloc[0]
    return {
        "trials": len(frame),
        **breakdown(frame, timings),
        "wall_seconds": wall,
        "epochs_run": int(frame["epochs"].sum()),
        "train_images_per_second": images / wall if wall > 0 else float("nan"),
        "first_epoch_overhead_seconds": _total(frame, "first_epoch_overhead_seconds"),
        "compile_cache_hits": _total(frame, "compile_cache_hits", int),
        "compile_cache_misses": _total(frame, "compile_cache_misses", int),
        "feature_cache_hits": _total(frame, "feature_cache_hits", int),
        "gpu_busy_percent": busy,
        "best": None if best is None else config_label(best),
        f"best_{metric}": None if best is None else float(best[metric]),
        "trials_at_best": int((ranked[metric] == ranked[metric].iloc[0]).sum()) if best is not None else 0,
    }


def same_best(summaries: dict[str, dict[str, Any]]) -> bool | str:
    """Whether every way picks the same configuration: ``"tie"`` when some way's best validation value is shared
    by several trials (its pick is then the study's order, not a finding), else True or False."""
    if any(s["trials_at_best"] > 1 for s in summaries.values()):
        return "tie"
    picks = {s["best"] for s in summaries.values()}
    return None not in picks and len(picks) == 1


def comparison(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How many times faster the service's way (b) is than the study's way (a) and than Ray Tune by hand (c), and
    whether every way picks the same configuration (``same_best``)."""
    b = summaries[SERVICE_WAY]
    return {
        "speedup_wall": summaries[STUDY_WAY]["wall_seconds"] / b["wall_seconds"],
        "speedup_vs_by_hand": summaries[BY_HAND]["wall_seconds"] / b["wall_seconds"],
        "same_best": same_best(summaries),
    }


def to_markdown(summaries: dict[str, dict[str, Any]], extra: dict[str, Any]) -> str:
    table = pd.DataFrame(summaries).rename_axis("measure").reset_index()
    cells = table.astype(object).where(table.notna(), "n/a")
    for col in WAYS:  # metrics to 4 decimals, times and rates to 1
        cells[col] = [
            (f"{v:.4f}" if m.startswith("best_") else f"{v:.1f}") if isinstance(v, float) else str(v)
            for m, v in zip(cells["measure"], cells[col])
        ]
    lines = [cells.to_markdown(index=False, disable_numparse=True), ""]
    lines += [f"- {k}: {f'{v:.2f}' if isinstance(v, float) else v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def run_bench(
    study_name: str,
    *,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    fraction: float = 1.0,
    epochs: int | None = None,
    image_size: int | None = None,
    data_scale: int = 1,
    storage: str | Path | None = None,
    name: str | None = None,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Path]:
    """Run the three ways; return the per-way summaries, the comparison and the folder with bench.md/bench.json."""
    from data_pipeline.prepare import resolve_root
    from search.cluster.connect import init_ray
    from search.study.experiment import load_results, load_sweep, load_timings
    from search.sweep.gpu import BusySampler
    from search.sweep.runner import prepare_all, run_study

    full = load_study(study_name, preset, overrides)
    scale = scale_overrides(full, fraction=fraction, epochs=epochs, image_size=image_size, data_scale=data_scale)
    scaled_over = merge(overrides or {}, scale)
    service = load_study(study_name, preset, scaled_over)
    studies = {
        STUDY_WAY: load_study(study_name, preset, merge(scaled_over, study_way_overrides(service))),
        BY_HAND: load_study(study_name, preset, merge(scaled_over, by_hand_overrides())),
        SERVICE_WAY: service,
    }
    root = Path(storage or tempfile.mkdtemp(prefix="sweep-bench-")) / check_name(
        name or f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if root.exists():
        raise SpecError(f"{root} exists already: pick another --name")
    prepared = prepare_all(service)  # decode and cache the images first: no way's clock includes it
    init_ray(None, service.train.backend)
    # by hand, every trial reads the same files itself (the synthetic set's folder named, not generated again)
    files = {opt: dataclasses.replace(d.config, data_dir=str(resolve_root(d.config))) for opt, d in prepared.items()}
    summaries = {}
    for way, study in studies.items():
        with tempfile.TemporaryDirectory(prefix="sweep-bench-cache-") as cache, BusySampler() as busy:
            t0 = time.perf_counter()  # caches start empty: (b) earns every hit it reports inside this run
            exp = run_study(
                study,
                storage=root,
                name=SLUGS[way],
                cache_dir=cache,
                trial_datasets=ReadInTrial(files) if way == BY_HAND else None,
                gpus_per_trial=gpus_per_trial,
                cpus_per_trial=cpus_per_trial,
                verbose=0,
            )
            wall = time.perf_counter() - t0
        sweep = load_sweep(exp)
        sizes = {int(opt): d["splits"]["train"]["n"] for opt, d in sweep["data"].items()}
        frame = load_results(exp)
        summaries[way] = way_summary(frame, wall, sizes, busy.mean, load_timings(exp), study.metric, study.mode)
    extra = comparison(summaries) | {
        "trials in the full study": trial_count(full),
        "study's way, full study, estimated seconds": summaries[STUDY_WAY]["wall_seconds"] * full_scale(full, service),
        "backend": service.train.backend,
        "gpus_per_trial": load_sweep(root / SLUGS[SERVICE_WAY])["resources"]["gpus_per_trial"],
    }
    write_file(root / "bench.md", to_markdown(summaries, extra).encode())
    write_file(root / "bench.json", json.dumps({"ways": summaries, **extra}, indent=2, default=str).encode())
    return summaries, extra, root
