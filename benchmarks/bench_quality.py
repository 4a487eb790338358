"""Quality and speed of the quickstarts on this machine: does a search find a good model, and how fast?

Usage: python benchmarks/bench_quality.py [--storage DIR] [--backend tensorflow|jax] [--study classification ...]
Runs `sweep run STUDY --preset quickstart` for each study (each with its own fresh local Ray cluster, as the CLI
does) and prints a Markdown table: the sweep's wall time (data preparation, Ray start, trials and test evaluation;
the report is written afterwards and not counted), trials run and stopped by ASHA, the winner (chosen on validation)
and its test metric next to a model that learned nothing. The issue's targets are shown beside them.
"""

import argparse
import os
import tempfile
import time

TARGETS = {  # test metric >=, in <= 180 s
    "classification": ("accuracy", 0.90),
    "segmentation": ("dice", 0.80),
    "brain_mri": ("accuracy", 0.85),  # chance: the larger class, yes, is 61% of the slices
    "brain_mri_segmentation": ("dice", 0.75),
}
MAX_SECONDS = 180


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", default=None, help="where the experiments go (default: a temporary folder)")
    parser.add_argument("--backend", default="tensorflow")
    parser.add_argument("--study", action="append", choices=sorted(TARGETS), help="default: all")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import ray

    from search.outputs.headline import lines, outcome
    from search.outputs.report import publish_report
    from search.study.experiment import load_results, load_sweep
    from search.study.spec import load_study
    from search.sweep.runner import run_study

    storage = args.storage or tempfile.mkdtemp(prefix="bench-quality-")
    rows = []
    for name in args.study or sorted(TARGETS):
        study = load_study(name, "quickstart", {"train": {"backend": args.backend}})
        started = time.perf_counter()
        experiment = run_study(study, storage=storage, name=f"{name}-quickstart-{time.strftime('%H%M%S')}", verbose=0)
        wall = time.perf_counter() - started
        o = outcome(load_results(experiment), study, load_sweep(experiment)["data"])
        report = publish_report(experiment)
        ray.shutdown()  # the next study starts its own cluster, as `sweep run` would
        metric, target = TARGETS[name]
        test, base = o["test"][metric], o["baseline"][metric]
        met = "yes" if test >= target and wall <= MAX_SECONDS else "no"
        rows.append(
            f"| {name} quickstart | {wall:.0f} | {o['trials']} | {o['stopped']} ({o['saved_percent']:.0f}% time saved)"
            f" | {o['winner']} | {metric} {test:.4f} | {base:.4f} | ≥ {target} in ≤ {MAX_SECONDS} s: {met} |"
        )
        print(f"\n{name} quickstart, as `sweep run` ends:\n" + "\n".join(lines(o, f"{report}/report.html")), flush=True)
    print(f"\n{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end, backend {args.backend}\n")
    print("| study | wall s | trials | stopped by ASHA | winner (on validation) | test | no-skill | target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
