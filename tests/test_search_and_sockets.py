"""The study's Optuna search on Ray Tune with a cheap function trainable (no Keras): the same seed proposes the same
configurations, and TPE concentrates its later proposals near the optimum where random search does not. On the same
local Ray cluster (started as `sweep run` starts it), and on `sweep tensorboard`: no server listens beyond loopback."""

import ipaddress
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).parent.parent
BEST_LR, BEST_DROPOUT = 1e-3, 0.3  # the optimum of the cheap objective
LR_RANGE, DROPOUT_RANGE = (1e-5, 1e-1), (0.0, 0.6)


@pytest.fixture(scope="module")
def local_ray():
    import ray
    from ray import cloudpickle

    from search.cluster.connect import init_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    init_ray(None, "tensorflow")  # the local cluster `sweep run` starts: 127.0.0.1 only
    yield ray
    ray.shutdown()


def _study(tmp_path, algorithm: str, seed: int, samples: int):
    from search.study.spec import load_study

    spec = {
        "task": "classification",
        "search": {"algorithm": algorithm, "num_samples": samples, "seed": seed},
        "space": {
            "model": ["inception_resnet_v2"],
            "lr": {"loguniform": list(LR_RANGE)},
            "dropout": {"uniform": list(DROPOUT_RANGE)},
        },
        "train": {"weights": None},
        "data": {"image_size": 75},
        "resources": {"max_concurrent_trials": 1},  # one at a time: each proposal sees every earlier result
    }
    path = tmp_path / f"{algorithm}-{seed}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_study(str(path))


def _distance(config) -> float:
    """Distance from the optimum in the unit square (log lr, dropout), each axis scaled to its range."""
    span = math.log10(LR_RANGE[1]) - math.log10(LR_RANGE[0])
    d_lr = (math.log10(config["lr"]) - math.log10(BEST_LR)) / span
    d_do = (config["dropout"] - BEST_DROPOUT) / (DROPOUT_RANGE[1] - DROPOUT_RANGE[0])
    return math.hypot(d_lr, d_do)


def _proposals(study, samples: int | None = None) -> list[dict]:
    """The configurations the study's search proposes, in order, when each is scored by the cheap objective before
    the next is asked for: the searcher driven through the calls Ray Tune makes (set_search_properties, suggest,
    on_trial_complete), without actors, so it costs milliseconds."""
    from search.study.spec import param_space
    from search.sweep.runner import _search_alg

    space = {k: v for k, v in param_space(study).items() if k in ("lr", "dropout")}
    searcher = _search_alg(study, tempfile.mkdtemp(prefix="experiment-"))  # a new experiment: its own optuna.db
    if study.search.algorithm == "random":  # Ray Tune's variant generator, as a sweep gets it: blind to results
        from ray.tune.experiment import Experiment

        searcher.add_configurations([Experiment("random", lambda config: None, config=space, num_samples=samples)])
        trials = iter(searcher.next_trial, None)
        return [{"lr": t.config["lr"], "dropout": t.config["dropout"]} for t in trials]
    assert searcher.set_search_properties(study.metric, "max", space)
    out = []
    for i in range(samples or study.search.num_samples):
        config = searcher.suggest(f"t{i}")
        out.append({"lr": config["lr"], "dropout": config["dropout"]})
        searcher.on_trial_complete(f"t{i}", {study.metric: 1.0 - _distance(config)})
    return out


def test_optuna_same_seed_same_trials_and_tpe_concentrates_where_random_does_not(tmp_path):
    samples, late = 40, 15
    tpe = _proposals(_study(tmp_path, "optuna", 3, samples))
    assert _proposals(_study(tmp_path, "optuna", 3, samples)) == tpe  # same seed: same configurations, same order
    assert _proposals(_study(tmp_path, "optuna", 4, samples), 5) != tpe[:5]  # and the seed matters

    rand = _proposals(_study(tmp_path, "random", 3, samples), samples)
    assert _proposals(_study(tmp_path, "random", 3, samples), samples) == rand  # random search is seeded too
    assert _proposals(_study(tmp_path, "random", 4, samples), 5) != rand[:5]
    tpe_late = float(np.median([_distance(c) for c in tpe[-late:]]))
    rand_late = float(np.median([_distance(c) for c in rand[-late:]]))
    tpe_early = float(np.median([_distance(c) for c in tpe[:10]]))  # TPE's random start-up phase
    assert tpe_late < 0.5 * rand_late, (tpe_late, rand_late)
    assert tpe_late < 0.5 * tpe_early, (tpe_late, tpe_early)


def _psutil():
    """psutil as Ray ships it (ray/thirdparty_files, on the path once ray is imported)."""
    import importlib

    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _exposed(pids: set[int]) -> list[str]:
    """Listening sockets of these processes on an address other than loopback."""
    psutil, out = _psutil(), []
    for c in psutil.net_connections(kind="inet"):
        if c.status != psutil.CONN_LISTEN or c.pid not in pids:
            continue
        ip = ipaddress.ip_address(c.laddr.ip.split("%")[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_loopback:
            out.append(f"{psutil.Process(c.pid).name()} {c.laddr.ip}:{c.laddr.port}")
    return out


def _tree(pid: int) -> set[int]:
    root = _psutil().Process(pid)
    return {root.pid} | {p.pid for p in root.children(recursive=True)}


def _listening(pids: set[int]) -> int:
    psutil = _psutil()
    return sum(1 for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids)


def test_no_server_listens_beyond_loopback(local_ray, tmp_path):
    import os

    # The check itself can fail: a socket on every address is caught.
    with socket.socket() as wide:
        wide.bind(("0.0.0.0", 0))
        wide.listen()
        assert _exposed({os.getpid()}), "the check missed a socket bound to 0.0.0.0"

    @local_ray.remote
    def pid():
        return os.getpid()

    local_ray.get([pid.remote() for _ in range(2)])  # workers up, with their own servers
    ray_pids = _tree(os.getpid())
    assert _listening(ray_pids) >= 3  # GCS, raylet, workers: the check sees Ray's servers
    assert _exposed(ray_pids) == []

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "sweep.json").write_text(json.dumps({"study": {"task": "segmentation"}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tb = subprocess.Popen(
        [sys.executable, "-m", "search", "tensorboard", str(exp), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _listening(_tree(tb.pid)):
            assert tb.poll() is None, "sweep tensorboard exited"
            time.sleep(0.5)
        assert _listening(_tree(tb.pid)), "sweep tensorboard never listened"
        assert _exposed(_tree(tb.pid)) == []
    finally:
        tb.terminate()
        tb.wait(timeout=30)


def test_a_search_for_two_objectives_tells_optuna_both_and_ray_tune_no_metric(tmp_path):
    """Ray Tune's Tuner calls set_search_properties with its TuneConfig's metric, which would replace the searcher's
    two: the runner passes none for two objectives, and the Optuna study gets both values of every trial."""
    import optuna

    from search.study.spec import load_study, param_space
    from search.sweep.runner import _search_alg

    objectives = {"search": {"algorithm": "optuna", "num_samples": 6, "objectives": ["val_dice", "size_mb"]}}
    study = load_study("segmentation", "smoke", objectives)
    experiment = tmp_path / "two"
    experiment.mkdir()
    searcher = _search_alg(study, str(experiment))
    assert searcher.set_search_properties(None, None, param_space(study))  # the Tuner's call, no metric of its own
    assert searcher.searcher.metric == ["best_val_dice", "size_mb"]  # each trial's best epoch, not its last
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        last = {"val_dice": 0.0, "best_val_dice": config["lr"] * 10, "size_mb": 1.0 + i}  # a trial's last report
        searcher.on_trial_complete(f"t{i}", last)
    told = optuna.load_study(study_name="two", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert told.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert [t.values[1] for t in told.trials] == [1.0 + i for i in range(6)]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in told.trials)
    import pandas as pd

    from search.study.results import pareto_front

    told_frame = pd.DataFrame(  # the values told, as results.csv would hold them (every trial measured)
        {"val_dice": [t.values[0] for t in told.trials], "size_mb": [t.values[1] for t in told.trials]}
    ).assign(latency_ms=1.0)
    ours = set(pareto_front(told_frame, "val_dice", "max", "size_mb").index)
    assert ours == {t.number for t in told.best_trials}  # the report's front is Optuna's own
