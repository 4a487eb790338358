"""Nothing is downloaded at run time: importing the pipeline (as the CLI, a Ray worker and a submitted job do) asks
nothing of any machine but this one."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent

# Run in a fresh interpreter: every lookup and connection to another machine is recorded and refused.
_PROBE = """
import ipaddress, json, socket, sys

attempts = []


def _local(host):
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _host(address):
    return address[0] if isinstance(address, tuple) else address  # AF_UNIX: a path, always local


real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex


def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        attempts.append(f"lookup {host}")
        raise socket.gaierror(socket.EAI_NONAME, "refused by the test")
    return real_getaddrinfo(host, *args, **kwargs)


def connect(self, address):
    if self.family != socket.AF_UNIX and not _local(_host(address)):
        attempts.append(f"connect {address}")
        raise ConnectionRefusedError("refused by the test")
    return real_connect(self, address)


def connect_ex(self, address):
    if self.family != socket.AF_UNIX and not _local(_host(address)):
        attempts.append(f"connect {address}")
        return 111
    return real_connect_ex(self, address)


socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = getaddrinfo, connect, connect_ex

import data_pipeline, data_pipeline.augment, search.cli, search.sweep.trial  # noqa: E401,F401

print(json.dumps(attempts))
"""


def test_importing_the_pipeline_opens_no_connection_beyond_this_machine():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}  # as on a user's machine
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
