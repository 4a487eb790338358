"""`sweep data synth` and `sweep data check` as a user runs them: real files, exit codes, messages."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _sweep(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "search", *args], env=env, capture_output=True, text=True, timeout=300)


def test_synth_then_check_then_break_it(tmp_path):
    out = tmp_path / "smears"
    sheet = tmp_path / "sheet.png"
    proc = _sweep("data", "synth", str(out), "--counts", "3,4,4,3", "--size", "48", "--contact-sheet", str(sheet))
    assert proc.returncode == 0, proc.stderr
    assert "wrote 14 images (Benign 3, Early 4, Pre 4, Pro 3)" in proc.stdout and sheet.stat().st_size > 1000
    proc = _sweep("data", "check", str(out), "--task", "segmentation")
    assert proc.returncode == 0 and "48x48 to 48x48 (1 distinct)" in proc.stdout and "no problems found" in proc.stdout
    victim = sorted((out / "Original" / "Pro").iterdir())[0]
    victim.write_bytes(b"\x89PNG broken")
    proc = _sweep("data", "check", str(out))
    assert proc.returncode == 1 and "1 problem(s)" in proc.stdout and str(victim) in proc.stdout
    (out / "Segmented" / "Pre" / "WBC-Malignant-Pre-002.png").unlink()
    proc = _sweep("data", "check", str(out), "--task", "segmentation")
    assert proc.returncode == 2 and "image without a mask" in proc.stderr and "Traceback" not in proc.stderr


def test_synth_refuses_a_used_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    proc = _sweep("data", "synth", str(tmp_path), "--per-class", "1")
    assert proc.returncode == 2 and "not empty" in proc.stderr


def _without_root_file_access() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the capability bounding set, so
    a root process obeys file modes as any user does (prctl PR_CAPBSET_DROP)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_folder_that_cannot_be_listed_is_one_line(tmp_path):
    """A class folder without read permission: exit 2 and one line naming it. Root reads every folder whatever its
    mode, so as root (CI) the command runs without the capabilities that let it: the listing really fails with
    EACCES either way."""
    import cv2
    import numpy as np

    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            assert cv2.imwrite(str(root / cls / f"{i}.png"), np.full((16, 16, 3), 40 * i, np.uint8))
    (root / "b").chmod(0)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "search", "data", "check", str(root)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
        )
    finally:
        (root / "b").chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {root / 'b'}: cannot be listed (Permission denied); give this user read access to it, or remove it"
    ]
