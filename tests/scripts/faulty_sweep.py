"""`sweep ARGS...` with test-only faults wrapped around the real trainable; the product path has no hooks.

The faults come from $SWEEP_TEST_FAULTS (JSON), keyed by a trial's learning rate (as written, e.g. "0.005"):
  {"raise": {"0.005": 1}}      the first N attempts of that trial raise (Ray retries it)
  {"report_delay_s": 0.5}      every report waits this long after it returns (a window for a test to act in)
  {"interrupt": {"0.01": 3}}   the first attempt of that trial raises where it would report epoch 3, once it has
                               trained and validated it (as a crash between an epoch and its checkpoint): Ray retries
                               the trial from its epoch-2 checkpoint. Needs "log": the metrics it would have reported
                               go to DIR/interrupted.jsonl, to compare with what the retry reports for that epoch
  {"log": "DIR"}               each attempt appends {trial_id, node, pid, start_epoch} to DIR/attempts.jsonl
  {"memory_gb": 4}             every attempt may use at most this much more address space than its worker held when
                               it began (RLIMIT_AS, a per-trial memory limit), set once Keras and its framework have
                               loaded and started their threads (TensorFlow aborts if it cannot start one); the
                               worker's own limit comes back when the attempt ends, since Ray reuses the worker
Usage: python tests/scripts/faulty_sweep.py run STUDY ... (any `sweep` command line).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

# Read here, in the driver: the wrapper travels to the workers by value with this dict (a worker of a cluster this
# process did not start does not see the driver's environment).
FAULTS = json.loads(os.environ.get("SWEEP_TEST_FAULTS", "{}"))


def _matches(config, lrs) -> bool:
    return any(math.isclose(float(config["lr"]), float(lr)) for lr in lrs)


def _log_attempt(folder: str, config) -> None:
    import ray
    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["epoch"]
    line = {
        "trial_id": tune.get_context().get_trial_id(),
        "lr": float(config["lr"]),
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "start_epoch": start,
    }
    with open(Path(folder) / "attempts.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _interrupt_once(folder: str, metrics: dict) -> None:
    """Raise in place of this report, on the trial's first attempt only; the metrics it carried kept for the test."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    marker = Path(folder) / f"interrupted-{trial_id}"
    if marker.exists():
        return
    marker.touch()
    plain = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
    with open(Path(folder) / "interrupted.jsonl", "a") as f:
        f.write(json.dumps({"trial_id": trial_id, "metrics": plain}) + "\n")
    raise RuntimeError(f"injected interruption before epoch {metrics['epoch']}'s report (test only)")


def _limit_memory(extra_gb: float, backend: str) -> tuple[int, int]:
    """Cap this process's address space at what it holds now plus ``extra_gb``; the previous (soft, hard) limits."""
    import resource

    os.environ["KERAS_BACKEND"] = backend
    import keras

    keras.ops.convert_to_numpy(keras.ops.ones(2) + 1)  # the framework's runtime and its threads start now
    before = resource.getrlimit(resource.RLIMIT_AS)
    held = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (held + int(extra_gb * 2**30), before[1]))
    return before


def faulty_trial(config, datasets, context):
    from ray import tune

    from search.sweep.trial import train_trial

    faults = FAULTS
    if faults.get("log"):
        _log_attempt(faults["log"], config)
    for lr, times in faults.get("raise", {}).items():
        if _matches(config, [lr]):
            marker = Path(context.experiment_dir) / f"injected-{tune.get_context().get_trial_id()}"
            count = int(marker.read_text()) if marker.exists() else 0
            if count < times:
                marker.write_text(str(count + 1))
                raise RuntimeError(f"injected failure {count + 1} of {times} (test only)")
    report, delay = tune.report, float(faults.get("report_delay_s", 0))
    interrupt = next((int(e) for lr, e in faults.get("interrupt", {}).items() if _matches(config, [lr])), None)

    def faulty_report(metrics, *args, **kwargs):
        if interrupt is not None and metrics.get("epoch") == interrupt:
            _interrupt_once(faults["log"], metrics)
        out = report(metrics, *args, **kwargs)
        time.sleep(delay)
        return out

    limits = None
    try:
        if delay or interrupt is not None:
            tune.report = faulty_report
        if faults.get("memory_gb"):
            limits = _limit_memory(float(faults["memory_gb"]), context.study.trial_train(config).backend)
        train_trial(config, datasets, context)
    finally:  # the worker is reused by later trials: give it back as it was
        tune.report = report
        if limits is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, limits)


if __name__ == "__main__":
    import search.sweep.runner
    from search.cli import main

    # the runner's trainable, wrapped here in the test, not in the product
    search.sweep.runner.train_trial = faulty_trial
    sys.exit(main(sys.argv[1:]))
