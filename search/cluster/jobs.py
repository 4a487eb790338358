"""Sweeps as Ray jobs on a cluster: submit, status, logs, stop (Ray's Job Submission client).

The project folder is the job's working directory (Ray uploads it, minus what .gitignore excludes), and the job's
entrypoint is the same ``sweep run`` a user types locally, with ``--address auto`` so the driver joins the cluster.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from search.cluster.connect import PROJECT_ROOT
from search.errors import SweepError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # `ray dashboard cluster.yaml` forwards the head's job server here
AGENT_WAIT_S = 180  # how long a just-started head may take to accept jobs (over a minute on a loaded machine)
UPLOAD_EXCLUDES = ["runs", "*.whl", "__pycache__", ".pytest_cache", ".ruff_cache", "docs"]


def _token() -> tuple[str, str] | None:
    """The token Ray's own rule finds, and where it was found: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH
    names, else ~/.ray/auth_token (which the first local `ray.init()` and `ray get-auth-token --generate` write)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).expanduser()
    token = path.read_text().strip() if path.is_file() else ""
    return (token, str(path)) if token else None


def _auth_headers(mode: str | None, token: tuple[str, str] | None) -> dict[str, str] | None:
    """With RAY_AUTH_MODE unset, the token found goes with every request, as the Authorization header the job server
    checks. (Setting RAY_AUTH_MODE=token from here would come too late: Ray reads it once, when it is imported.)
    A mode set explicitly is respected: Ray then sends its token itself, or none."""
    return {"Authorization": f"Bearer {token[0]}"} if mode is None and token else None


def _refused(address: str, reason: str, mode: str | None, token: tuple[str, str] | None) -> str:
    """The one line for a job server that refused this client: why, and what to do (pure)."""
    token_of = "the cluster's token (`ray get-auth-token` on the head prints it)"
    if mode is not None and mode.lower() != "token":
        advice = f"RAY_AUTH_MODE={mode} here sends no token: unset it, with {token_of} in ~/.ray/auth_token"
    elif token is None:
        advice = f"no token on this machine: put {token_of} in ~/.ray/auth_token or $RAY_AUTH_TOKEN"
    else:
        advice = f"the token from {token[1]} is not this cluster's: put {token_of} there"
    return f"the Ray job server at {address} refused this client ({reason}): {advice}."


def client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    mode, token = os.environ.get("RAY_AUTH_MODE"), _token()
    try:
        return JobSubmissionClient(address, headers=_auth_headers(mode, token))
    except AuthenticationError as exc:
        reason = exc.message.split(": ", 1)[-1].splitlines()[0][:200]  # "Authentication required: " off
        raise SweepError(_refused(address, reason, mode, token)) from None
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or ValueError depending on what failed
        raise SweepError(
            f"cannot reach a Ray job server at {address} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Is the cluster up (`ray up cluster.yaml`) and its dashboard port forwarded (`ray dashboard "
            "cluster.yaml`)? For a head on this machine: `ray start --head --dashboard-host 127.0.0.1`."
        ) from None


def entrypoint(run_args: list[str], storage: str, study_file: str | None = None) -> str:
    """The job's command: the local ``sweep run`` with the same options, joining the cluster (pure).
    A study file from the user's machine travels in $SWEEP_STUDY_YAML and is written to a fresh temporary folder
    under its own name (so the experiment keeps that name) before the run starts."""
    run = ["python", "-m", "search", "run"]
    options = [*run_args[1:], "--address", "auto", "--storage", storage]
    if study_file is None:
        return shlex.join([*run, run_args[0], *options])
    target = f'"$d"/{shlex.quote(Path(study_file).name)}'  # the folder expands, the name (any characters) never does
    write = f'd=$(mktemp -d) && printf "%s" "$SWEEP_STUDY_YAML" > {target}'
    return f"{write} && {shlex.join(run)} {target} {shlex.join(options)}"


def submit(
    address: str, run_args: list[str], storage: str, submission_id: str | None = None, study_text: str | None = None
) -> str:
    """Submit ``sweep run RUN_ARGS`` as a job; ``study_text``: the YAML of a study file named by run_args[0]."""
    job_client = client(address)
    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": UPLOAD_EXCLUDES}
    if study_text is not None:
        runtime_env["env_vars"] = {"SWEEP_STUDY_YAML": study_text}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return job_client.submit_job(
                entrypoint=entrypoint(run_args, storage, run_args[0] if study_text is not None else None),
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={"submitted_by": "sweep submit"},
            )
        except RuntimeError as exc:
            # A head that has just started answers before its job agent is up; Ray says to try again later.
            if "No available agent" not in str(exc):
                raise SweepError(f"the cluster at {address} did not take the job: {exc}") from None
            if time.monotonic() > deadline:
                raise SweepError(
                    f"the cluster at {address} did not take the job: its head has had no job agent for "
                    f"{AGENT_WAIT_S} s. The agent likely failed to start, most often because its HTTP port (52365 "
                    "unless `ray start --dashboard-agent-listen-port` says otherwise) is held by another process; "
                    "see dashboard_agent.log in the head's /tmp/ray/session_latest/logs, then restart the head."
                ) from None
            time.sleep(2)


def _known(job_client, job_id: str) -> None:
    ids = {j.submission_id for j in job_client.list_jobs() if j.submission_id}
    if job_id not in ids:
        recent = ", ".join(sorted(ids)[-5:]) or "none"
        raise SweepError(f"no job {job_id!r} on this cluster (jobs: {recent}); `ray job list` shows them all")


def status(address: str, job_id: str):
    job_client = client(address)
    _known(job_client, job_id)
    return job_client.get_job_info(job_id)


def logs(address: str, job_id: str, follow: bool = False) -> None:
    import asyncio
    import sys

    job_client = client(address)
    _known(job_client, job_id)
    if not follow:
        sys.stdout.write(job_client.get_job_logs(job_id))
        return

    async def tail() -> None:
        async for lines in job_client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())


def stop(address: str, job_id: str) -> bool:
    job_client = client(address)
    _known(job_client, job_id)
    return job_client.stop_job(job_id)
