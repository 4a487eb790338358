"""The cluster workflow against real parts: cluster.yaml checked by Ray's own schema; a real Ray head started with
a plain `ray start --head` on 127.0.0.1, which turns token authentication on by itself; `sweep submit/status/logs/stop`
as subprocesses with no RAY_AUTH_* variable, as a user runs them; the finished job's experiment exported, predicted
with and re-evaluated in fresh processes; and cluster.yaml's own head and worker start commands run as two nodes."""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import pandas as pd
import pytest
import yaml
from conftest import assert_reproduces_test_metrics, export_best, free_port, ray_head_command, run_sweep, stop_node

ROOT = Path(__file__).parent.parent
CLUSTER = ROOT / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema_and_keeps_the_dashboard_private():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER.read_text())
    validate_config(prepare_config(config))  # raises on any schema error
    import ray

    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    gpu_types = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert len(gpu_types) >= 2 and all(v["max_workers"] >= 1 for v in gpu_types.values())
    assert any("pip install" in c and "leukemia-sweep" in c for c in config["setup_commands"])
    broken = {**config, "max_workers": "many"}
    with pytest.raises(Exception, match="max_workers"):
        validate_config(prepare_config(broken))


def _plain_head(port: int, dash: int, agent: int, temp: str) -> list[str]:
    """A plain `ray start --head` on 127.0.0.1 with its dashboard (and job server) on 127.0.0.1 too."""
    return ray_head_command(port, agent, temp, "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2")


def _start_head(env: dict, command=_plain_head) -> tuple[subprocess.Popen, str, int]:
    """The head `command(port, dash, agent, temp)` starts (in the foreground: `--block`), until its dashboard answers
    and its job agent has bound its HTTP port (another process may still take a port between our pick and Ray's bind:
    then this head never takes a job, so start another); the process, the dashboard's address and the GCS port."""
    for _attempt in range(3):
        temp = tempfile.mkdtemp(prefix="/tmp/rayt-")  # short: Ray's socket paths must fit in 107 bytes
        port, dash, agent = free_port(), free_port(), free_port()
        proc = subprocess.Popen(
            command(port, dash, agent, temp),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        address = f"http://127.0.0.1:{dash}"
        agent_log = Path(temp) / "session_latest" / "logs" / "dashboard_agent.log"
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            text = agent_log.read_text(errors="replace") if agent_log.is_file() else ""
            if "address already in use" in text:
                break
            # (on 127.0.0.1 for a local head; a node that may take workers binds its agent to the machine's address)
            if re.search(rf"agent http address: \S+:{agent}\b", text) and _answers(address):
                return proc, address, port
            time.sleep(2)
        stop_node(proc)
    raise AssertionError(f"no Ray head with a working job agent in 3 tries; see {agent_log}")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real single-node Ray cluster on 127.0.0.1 with its job server, set up as on a user's machine: a home holding
    the token Ray writes there (`ray get-auth-token --generate`, as Ray's own warning advises; a first local
    `ray.init()` writes the same file), no RAY_AUTH_* variable, and a plain `ray start --head`, which then turns token
    authentication on by itself. The clients get the same environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is ours
        PYTHONPATH=str(ROOT),
        HOME=str(tmp_path_factory.mktemp("home")),  # not the real one: its token would turn auth on for any Ray here
    )
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run([*ray_cli, "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    proc, address, _port = _start_head(env)
    try:
        yield {"address": address, "env": env, "storage": tmp_path_factory.mktemp("jobruns")}
    finally:
        stop_node(proc)


def _answers(address: str) -> bool:
    """Whether the job server answers HTTP yet (any status: 401 without a token is an answer)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{address}/api/version", timeout=2)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def _start_line(commands: list[str]) -> str:
    """A node's `ray start` line in cluster.yaml. The `ray stop` before it is the only other line, and is not run here:
    it stops every Ray process of this user on the machine, other tests' clusters included."""
    *stops, start = commands
    assert stops == ["ray stop"] and " ray start " in f" {start} ", commands
    return start


def _on_this_machine(command: str, values: dict[str, object | None], *extra: str) -> str:
    """A cluster.yaml command as written, with only what must differ on one machine changed: each `--flag=` in `values`
    gets its value, or goes when it is None (a flag the file lacks fails the test: what runs is what the file says);
    `extra` flags are added."""
    for flag, value in values.items():
        command, found = re.subn(rf"--{flag}=\S+", "" if value is None else f"--{flag}={value}", command)
        assert found == 1, f"no --{flag}= in cluster.yaml's `{command}`"
    return " ".join([command, *extra])


def _in_home(path: str, home: Path) -> Path:
    """A file_mounts path on a machine whose home is `home` (a relative one is the project's, as `ray up` reads it)."""
    return home / path.removeprefix("~/") if path.startswith("~/") else ROOT / path


def _nodes(address: str, token: str | None) -> list[dict]:
    """The cluster's live nodes, from the dashboard's state API, asked with the token or without one."""
    import json
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{address}/api/v0/nodes?limit=100", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        nodes = json.load(answer)["data"]["result"]["result"]
    return [n for n in nodes if n["state"] == "ALIVE"]


def test_cluster_yaml_start_commands_make_a_two_node_cluster_that_needs_its_token(tmp_path):
    """cluster.yaml's head and worker start commands, environment and flags as written, run with bash as two nodes on
    127.0.0.1 (addresses, ports and temp dirs made local; the autoscaler's config, which `ray up` writes, left out).
    Each node has its own home, holding what the file's file_mounts copy there from the user's home: the token the
    user made as the README says. The worker joins only with the head's token; a client without it is refused."""
    import shutil
    import urllib.error

    config = yaml.safe_load(CLUSTER.read_text())
    # no RAY_AUTH_* variable, nor conftest's local-only switch (which makes `ray start --address` refuse to join)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ENABLE_WINDOWS_OR_OSX"))}
    base.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    user = {**base, "HOME": str(tmp_path / "user")}
    subprocess.run(["ray", "get-auth-token", "--generate"], env=user, capture_output=True, check=True)
    token = (tmp_path / "user" / ".ray" / "auth_token").read_text()
    node_env = {}
    for node in ("head", "worker"):
        home = tmp_path / node
        for remote, local in config["file_mounts"].items():
            if _in_home(local, tmp_path / "user").is_file():
                _in_home(remote, home).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(_in_home(local, tmp_path / "user"), _in_home(remote, home))
        node_env[node] = {**base, "HOME": str(home), "RAY_HEAD_IP": "127.0.0.1"}  # the launcher exports RAY_HEAD_IP

    def head_command(port: int, dash: int, agent: int, temp: str) -> list[str]:
        local = {"port": port, "dashboard-port": dash, "object-manager-port": free_port(), "autoscaling-config": None}
        line = _start_line(config["head_start_ray_commands"])
        extra = ("--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}")
        return ["bash", "-c", _on_this_machine(line, local, *extra, "--num-cpus=1", "--block")]

    stranger = {**base, "HOME": str(tmp_path / "stranger")}  # no token there, no RAY_AUTH_* variable
    tokenless = subprocess.run(  # a node whose token did not arrive does not start (a plain `ray start` would, open)
        head_command(free_port(), free_port(), free_port(), tempfile.mkdtemp(prefix="/tmp/rayt-")),
        env=stranger,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tokenless.returncode != 0 and "no authentication token was found" in tokenless.stderr, tokenless.stderr
    head, address, port = _start_head(node_env["head"], head_command)
    worker = None
    try:
        line = _start_line(config["worker_start_ray_commands"])
        local = {"address": f"$RAY_HEAD_IP:{port}", "object-manager-port": free_port()}
        extra = ("--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}")
        temp = tempfile.mkdtemp(prefix="/tmp/rayt-")
        command = _on_this_machine(line, local, *extra, f"--temp-dir={temp}", "--num-cpus=1", "--block")
        with (tmp_path / "worker.log").open("w") as log:
            worker = subprocess.Popen(
                ["bash", "-c", command],
                env=node_env["worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.time() + 90
        while len(_nodes(address, token)) < 2:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.time() < deadline, "the worker node did not join the head"
            time.sleep(1)

        with pytest.raises(urllib.error.HTTPError) as refused:
            _nodes(address, None)
        assert refused.value.code == 401
        refused.value.close()
        out = run_sweep("status", "raysubmit_none", "--address", address, env=stranger)
        assert out.returncode == 2 and "no token on this machine" in out.stderr, out.stderr[-2000:]
        out = run_sweep("status", "raysubmit_none", "--address", address, env=user)  # as the README says: nothing set
        assert out.returncode == 2 and "no job 'raysubmit_none'" in out.stderr, out.stderr[-2000:]  # served: it looked
    finally:
        if worker is not None:
            stop_node(worker)
        stop_node(head)


def _study(path: Path, epochs: int, lrs=(0.01, 0.001), repeats=1) -> Path:
    spec = {
        "task": "segmentation",
        "search": {"repeats": repeats},
        "space": {"model": ["unet"], "lr": list(lrs), "dropout": [0.1]},
        "train": {"batch_size": 8, "epochs": epochs, "base_filters": 4},
        "data": {"image_size": 32, "synthetic_counts": [6, 8, 8, 6], "synthetic_size": 32, "balance_to": None},
        "scheduler": {"grace_period": epochs, "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _wait(head, job_id: str, states: set[str], timeout: float) -> str:
    deadline = time.time() + timeout
    while True:
        out = run_sweep("status", job_id, "--address", head["address"], env=head["env"])
        assert out.returncode == 0, out.stderr[-2000:]
        state = out.stdout.split(":", 1)[1].split()[0]
        if state in states:
            return state
        assert state not in {"FAILED", "STOPPED", "SUCCEEDED"}, out.stdout
        assert time.time() < deadline, f"job {job_id} still {state} after {timeout} s"
        time.sleep(3)


def test_submit_a_study_file_then_export_predict_and_reproduce_its_test_metrics(head, tmp_path):
    study = _study(tmp_path / "tinyseg.yaml", epochs=2, repeats=2)  # each configuration with two seeds
    out = run_sweep(
        "submit", str(study), "--address", head["address"], "--storage", str(head["storage"]), env=head["env"]
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    job_id = out.stdout.split("submitted job ", 1)[1].split()[0]
    assert _wait(head, job_id, {"SUCCEEDED"}, timeout=420) == "SUCCEEDED"
    logs = run_sweep("logs", job_id, "--address", head["address"], env=head["env"])
    assert "best trial per model family" in logs.stdout
    (exp,) = [p for p in head["storage"].iterdir() if p.name.startswith("tinyseg-")]  # named after the file
    frame = pd.read_csv(exp / "results.csv")
    assert sorted(frame["lr"]) == [0.001, 0.001, 0.01, 0.01] and set(frame["status"]) == {"completed"}
    assert sorted(frame["trial"]) == [f"unet-lr{lr}-do0.1-r{r}" for lr in ("0.001", "0.01") for r in (0, 1)]
    seeds = frame.groupby("lr")["val_dice"].agg(["min", "max"])
    assert (seeds["min"] < seeds["max"]).all()  # different seeds, different runs
    table = pd.read_csv(exp / "report" / "table_unet.csv")  # the report shows mean ± std over the seeds
    assert len(table) == 2 and table["Dice"].str.contains(" ± ").all()

    # export the cluster run's best trial, then use it in fresh processes
    model_dir = tmp_path / "model"
    manifest = export_best(exp, model_dir)
    best = frame.loc[frame["val_dice"].idxmax()]
    assert manifest["trial"] == best["trial"] and manifest["selected_by"]["split"] == "validation"
    assert manifest["preprocessing"]["input_size"] == 32 and manifest["preprocessing"]["mask_rule"] == "nonzero"

    assert_reproduces_test_metrics(model_dir, best, ("dice", "iou", "accuracy", "study_dice", "loss"))

    from data_pipeline import synth

    images = synth.write_dataset(tmp_path / "new", (2, 1, 1, 1), size=48, seed=11) / "Original"
    predicted = run_sweep("predict", str(model_dir), str(images), "--out", str(tmp_path / "masks"))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    import cv2

    for src in images.rglob("*.png"):  # outputs mirror the inputs' folders (Original/CLASS/NAME.png)
        mask = cv2.imread(str(tmp_path / "masks" / src.parent.name / f"{src.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (48, 48) and set(mask.ravel()) <= {0, 255}  # at the image's own size, binary
        assert (tmp_path / "masks" / src.parent.name / f"{src.stem}_overlay.png").is_file()


def test_stop_a_running_job_and_clear_errors(head, tmp_path):
    study = _study(tmp_path / "long.yaml", epochs=200, lrs=(0.01,))
    out = run_sweep(
        "submit", str(study), "--address", head["address"], "--storage", str(head["storage"]), env=head["env"]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = out.stdout.split("submitted job ", 1)[1].split()[0]
    _wait(head, job_id, {"RUNNING"}, timeout=120)
    deadline = time.time() + 180
    while "Trial status" not in run_sweep("logs", job_id, "--address", head["address"], env=head["env"]).stdout:
        assert time.time() < deadline, "the sweep's trials did not start"  # stop it mid-sweep, not mid-import
        time.sleep(3)
    stopped = run_sweep("stop", job_id, "--address", head["address"], env=head["env"])
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stderr[-2000:]
    assert _wait(head, job_id, {"STOPPED"}, timeout=120) == "STOPPED"
    followed = run_sweep("logs", job_id, "--follow", "--address", head["address"], env=head["env"], timeout=120)
    assert followed.returncode == 0 and "Trial status" in followed.stdout  # the stream ends with the job

    unknown = run_sweep("status", "raysubmit_nope", "--address", head["address"], env=head["env"])
    assert unknown.returncode == 2 and "no job 'raysubmit_nope'" in unknown.stderr
    for env, says in (
        ({**head["env"], "HOME": str(tmp_path)}, "no token on this machine"),  # no ~/.ray/auth_token there
        ({**head["env"], "RAY_AUTH_TOKEN": uuid4().hex}, "the token from $RAY_AUTH_TOKEN is not this cluster's"),
        ({**head["env"], "RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE=disabled here sends no token"),  # respected
    ):
        refused = run_sweep("status", job_id, "--address", head["address"], env=env)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr[-2000:]
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-2000:]
    unreachable = run_sweep("status", job_id, "--address", f"http://127.0.0.1:{free_port()}", env=head["env"])
    assert unreachable.returncode == 2 and "cannot reach a Ray job server" in unreachable.stderr
    bad = run_sweep("submit", "no-such-study", "--address", head["address"], env=head["env"])
    assert bad.returncode == 2 and "unknown study 'no-such-study'" in bad.stderr  # refused before any upload
