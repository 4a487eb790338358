"""What several commands share: the study options of `run`, `bench` and `submit`, and --set's parsing."""

from __future__ import annotations

from search.study.spec import BACKENDS

DATA_SCALE = 8  # sweep bench: a sized synthetic set's images × this by default (its smoke presets: 53 -> 424 images)


def _parse_set(items: list[str]) -> dict:
    """--set section.key=value (YAML value) -> nested overrides."""
    import yaml

    from search.errors import SweepError

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SweepError(f"--set takes section.key=value (e.g. train.epochs=5), got {item!r}")
        section, field = key.split(".", 1)
        try:
            out.setdefault(section, {})[field] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SweepError(
                f"--set {item!r}: the value is not valid YAML ({problem}); quote it, e.g. {key}='\"text\"'"
            ) from None
    return out


def add_study_options(run, storage_default: str, storage_help: str) -> None:
    """The options `run`, `bench` and `submit` share: which study, which data, where, how many resources."""
    run.add_argument(
        "study",
        help="a built-in study (classification, segmentation, brain_mri, brain_mri_segmentation) or a study .yaml file",
    )
    run.add_argument("--preset", help="a preset of the study, e.g. smoke (tiny, fast)")
    run.add_argument(
        "--data-dir", help="dataset folder or CSV manifest (layouts: see the README); default: embedded synthetic set"
    )
    run.add_argument("--storage", default=storage_default, help=storage_help)
    run.add_argument("--name", help="experiment name (default STUDY-DATE-TIME)")
    run.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; 0.25 packs 4 trials on a GPU (default auto)")
    run.add_argument("--cpus-per-trial", type=float)
    run.add_argument("--backend", choices=BACKENDS, help="Keras backend for every trial")
    run.add_argument("--seed", type=int)
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a study setting, e.g. --set train.epochs=5 (repeatable)",
    )


def overrides(args) -> dict:
    """The study overrides these options make: --set's, then --data-dir, --backend and --seed."""
    over = _parse_set(args.set)
    if args.data_dir:
        over.setdefault("data", {})["data_dir"] = args.data_dir
    if args.backend:
        over.setdefault("train", {})["backend"] = args.backend
    if args.seed is not None:
        over.setdefault("search", {})["seed"] = args.seed
    return over
