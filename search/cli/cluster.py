"""A study as a job on a Ray cluster: `sweep submit`, `status`, `logs`, `stop`."""

from __future__ import annotations

import os
from pathlib import Path

from search.cli.options import add_study_options, overrides


def add(sub) -> None:
    """The cluster job commands."""
    from search.cluster.jobs import DEFAULT_ADDRESS

    address_help = f"the cluster's job server (default $RAY_API_SERVER_ADDRESS or {DEFAULT_ADDRESS})"
    default_address = os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS)
    submit = sub.add_parser("submit", help="submit a study to a Ray cluster as a job; prints the job id")
    add_study_options(
        submit,
        "~/sweep-runs",
        "where the cluster writes the experiment: a path on the head node (default ~/sweep-runs) or, for "
        "multi-node clusters, shared storage such as s3://bucket/sweeps",
    )
    submit.add_argument("--address", default=default_address, help=address_help)
    submit.add_argument("--job-id", help="choose the job id (default: Ray picks one)")
    for name, helptext in (
        ("status", "a submitted job's status"),
        ("logs", "a submitted job's output"),
        ("stop", "stop a submitted job"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("job_id")
        cmd.add_argument("--address", default=default_address, help=address_help)
        if name == "logs":
            cmd.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")


def _submit(args) -> int:
    from search.cluster import jobs
    from search.study.spec import load_study

    over = overrides(args)
    # Validate here, before anything is uploaded; the data folder and the installed backends are the cluster's, so
    # they are checked there.
    theirs = {("data", "data_dir"), ("train", "backend")}
    local = {k: {f: v for f, v in sec.items() if (k, f) not in theirs} for k, sec in over.items()}
    load_study(args.study, args.preset, local)
    run_args = _run_args(args)
    study_text = None
    if Path(args.study).suffix in (".yaml", ".yml"):
        study_text = Path(args.study).read_text()
    job_id = jobs.submit(args.address, run_args, args.storage, args.job_id, study_text)
    print(f"submitted job {job_id} to {args.address}")
    print(f"  follow it:   sweep logs {job_id} --follow --address {args.address}")
    print(f"  its status:  sweep status {job_id} --address {args.address}")
    print(f"  results in:  {args.storage} (on the cluster)")
    return 0


def _run_args(args) -> list[str]:
    """`sweep run` options equivalent to these parsed ones (the study first)."""
    out = [args.study]
    for flag in ("preset", "data_dir", "name", "gpus_per_trial", "cpus_per_trial", "backend", "seed"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    for item in args.set:
        out += ["--set", item]
    return out


def _status(args) -> int:
    from search.cluster import jobs

    info = jobs.status(args.address, args.job_id)
    print(f"{args.job_id}: {info.status}")
    if info.message:
        print(f"  {info.message}")
    print(f"  entrypoint: {info.entrypoint}")
    return 0


def _logs(args) -> int:
    from search.cluster import jobs

    jobs.logs(args.address, args.job_id, follow=args.follow)
    return 0


def _stop(args) -> int:
    from search.cluster import jobs

    stopped = jobs.stop(args.address, args.job_id)
    print(f"{args.job_id}: " + ("stop requested" if stopped else "not running (already finished)"))
    return 0


HANDLERS = {
    ("submit", None): _submit,
    ("status", None): _status,
    ("logs", None): _logs,
    ("stop", None): _stop,
}
