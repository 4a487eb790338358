"""The ``sweep`` command line (also ``python -m search``): one module per command group."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any TensorFlow import: keep the terminal readable

from search.cli import cluster, data, experiments, model

GROUPS = (experiments, cluster, model, data)  # whose handlers main dispatches to


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep", description="Hyperparameter sweeps for blood-smear classification and segmentation on Ray Tune."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add in (experiments.add, cluster.add, experiments.add_reading, model.add, data.add):  # --help's order
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("run", "resume", "bench", "serve") and not getattr(args, "address", None):
        # A local cluster is one node: with this, Ray uses 127.0.0.1 and binds its servers to loopback only.
        # (Must be set before Ray is imported.)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    handlers = {key: handler for group in GROUPS for key, handler in group.HANDLERS.items()}
    try:
        return handlers[(args.cmd, getattr(args, "data_cmd", None))](args)
    except Exception as exc:
        if getattr(exc, "exit_code", None) is None:  # a bug, not bad input: keep the traceback
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
