"""Starting or joining Ray: a fresh local cluster on 127.0.0.1, or the cluster at an address, with what every worker
needs in its environment (the Keras backend, this project on its path)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from search.errors import SweepError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding search/: on every worker's PYTHONPATH


def init_ray(address: str | None, backend: str) -> None:
    """Join the Ray cluster at ``address`` (SweepError with what to do when it refuses), or start a fresh local one
    on 127.0.0.1; every worker gets ``backend`` as its Keras backend and this project on its path. Once a process."""
    import ray

    # Ray Tune's TensorBoard logger (tensorboardX) warns at every NaN or infinite scalar, dozens of lines a sweep:
    # a diverged trial's loss and the -inf checkpoint score of an epoch that did not improve are both deliberate.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)

    env = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    if ray.is_initialized():
        return
    if address:
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        except ConnectionError as exc:  # no cluster there, or its token is not the one this machine holds
            raise SweepError(join_refused(address, exc, os.environ.get("RAY_AUTH_MODE"))) from None
    else:  # a fresh local cluster, on 127.0.0.1 only where `sweep` set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 first
        ray.init(
            address="local",
            include_dashboard=False,
            runtime_env={"env_vars": env},
            log_to_driver=False,
        )


def join_refused(address: str, exc: BaseException, mode: str | None) -> str:
    """What to do when a driver cannot join the cluster at ``address`` (pure). Ray sends a token to an explicit
    address only with RAY_AUTH_MODE=token: a driver holding one cannot tell by itself whether the cluster wants it,
    and sending it to a cluster without authentication breaks the driver's own connections."""
    said = [line for line in str(exc.__cause__ or exc).splitlines() if line.strip()] or [type(exc).__name__]
    reason = said[-1].split(": ", 1)[-1].split(". ")[0][:200]  # Ray's own last word, its first sentence
    token_of = (
        "the cluster's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN (`ray get-auth-token` on its head prints it)"
    )
    if "token" not in reason.lower():
        advice = "check that it runs (`ray status` on the head) and that the address is its GCS's (host:6379)"
    elif (mode or "").lower() != "token":
        advice = f"the cluster uses token authentication: `export RAY_AUTH_MODE=token`, with {token_of}"
    else:
        advice = f"the token this machine sent is not the cluster's: put {token_of}"
    return f"cannot join the Ray cluster at {address} ({reason}): {advice}"
