"""Every file the service writes (data_pipeline.files): atomic, checked, cleaned after a crash, and safe when two
processes write the same thing at once; one driver per experiment. Real files, real processes, real signals."""

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli as _cli

from data_pipeline import DataError, synth
from data_pipeline.files import (
    STALE_AFTER_S,
    TMP_PREFIX,
    is_leftover,
    publish_folder,
    refuse_inside,
    write_file,
    write_image,
)

ROOT = Path(__file__).parent.parent


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = write_file(tmp_path / "results.csv", b"old,rows\n")

    def half_then_fail(out):
        out.write(b"new,ro")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        write_file(target, half_then_fail)
    assert target.read_bytes() == b"old,rows\n" and os.listdir(tmp_path) == ["results.csv"]
    write_file(target, lambda out: np.save(out, np.arange(3)))  # a writer function, as np.save takes a file
    assert np.load(target).tolist() == [0, 1, 2] and os.listdir(tmp_path) == ["results.csv"]


def test_a_folder_is_published_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError), publish_folder(tmp_path / "set") as staging:
        (staging / "a.png").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with publish_folder(tmp_path / "set") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "a.txt").write_text("whole")
    assert os.listdir(tmp_path) == ["set"] and (tmp_path / "set" / "sub" / "a.txt").read_text() == "whole"
    assert oct((tmp_path / "set").stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's private 0o700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_image_write_that_fails_exits_2_with_one_line(tmp_path, capsys):
    root = synth.write_dataset(tmp_path / "smears", (1, 1, 1, 1), size=32, seed=1)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where a folder should be")
    code, _, err = _cli(capsys, "data", "check", root, "--sheet", blocker / "sheet.png")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{blocker / 'sheet.png'}: could not be written" in err and "disk full or not writable?" in err
    assert blocker.read_text() == "a regular file where a folder should be"
    with pytest.raises(DataError, match="could not be written"):  # the same check for every image write
        write_image(blocker / "mask.png", np.zeros((4, 4), np.uint8))


def test_out_paths_are_refused_inside_protected_folders_through_symlinks(tmp_path):
    data = tmp_path / "data"
    (data / "Benign").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    folders = {data.resolve(): "the study's data folder"}
    with pytest.raises(DataError, match="inside the study's data folder"):
        refuse_inside(tmp_path / "link" / "Benign" / "out", folders, "--out")
    with pytest.raises(DataError, match="inside the study's data folder"):
        refuse_inside(data, folders, "--out")
    assert refuse_inside(tmp_path / "elsewhere", folders, "--out") == (tmp_path / "elsewhere").resolve()


# ---- two writers of the built-in synthetic set -----------------------------------------------------------------


def _write_embedded(barrier, cache, queue):
    barrier.wait()  # both start at once: both find no set, both write one, one rename wins
    try:
        queue.put(str(synth.embedded_dataset((12, 12, 12, 12), size=48, seed=5, cache_dir=cache)))
    except Exception as exc:  # the loser's error, reported to the test
        queue.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_writing_the_synthetic_set_both_get_the_whole_set(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_write_embedded, args=(barrier, tmp_path, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    answers = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert len(set(answers)) == 1 and Path(answers[0]).is_dir(), answers
    root = Path(answers[0])
    for folder in ("Original", "Segmented"):
        assert [len(list((root / folder / c).iterdir())) for c in synth.CLASSES] == [12, 12, 12, 12]
    assert os.listdir(root.parent) == [root.name]  # the loser's staging folder is gone


# ---- what a killed writer leaves behind ------------------------------------------------------------------------

_SLOW_WRITER = """
import sys, time
from data_pipeline.files import write_file
def slow(out):
    out.write(b"half of it")
    out.flush()
    print("writing", flush=True)
    time.sleep(60)
write_file(sys.argv[1], slow)
"""


def _slow_writer(target: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(target)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "writing"
    return child


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    killed, running = _slow_writer(tmp_path / "sweep.json"), _slow_writer(tmp_path / "results.csv")
    try:
        left = {p: next(n for n in os.listdir(tmp_path) if f"-{p.pid}-" in n) for p in (killed, running)}
        assert all(n.startswith(TMP_PREFIX) for n in left.values())
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        write_file(tmp_path / "other.json", b"{}")
        assert sorted(os.listdir(tmp_path)) == sorted([left[running], "other.json"])  # a live writer's file stays
    finally:
        running.kill()
        running.wait(30)


def test_leftovers_are_this_hosts_dead_writers_or_old_ones_from_elsewhere():
    dead, alive = lambda pid: False, lambda pid: True
    assert is_leftover(f"{TMP_PREFIX}hosta-123-abcd.part", 0, "hosta", dead)
    assert not is_leftover(f"{TMP_PREFIX}hosta-123-abcd.part", 10 * STALE_AFTER_S, "hosta", alive)
    assert not is_leftover(f"{TMP_PREFIX}hostb-123-abcd", STALE_AFTER_S / 2, "hosta", dead)
    assert is_leftover(f"{TMP_PREFIX}hostb-123-abcd", STALE_AFTER_S + 1, "hosta", alive)
    assert not is_leftover("results.csv", 10 * STALE_AFTER_S, "hosta", dead)


# ---- one driver per experiment ---------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from search.study.experiment import driver_lock
with driver_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_driver_of_an_experiment_is_refused_naming_the_first(tmp_path, capsys):
    from search.study.experiment import SWEEP_FILE, driver_lock

    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / SWEEP_FILE).write_text("{}")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(experiment)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        from search.errors import SweepError

        with pytest.raises(SweepError) as refused, driver_lock(str(experiment)):
            pass
        assert f"pid {holder.pid} on {socket.gethostname()}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait(30)
    with driver_lock(str(experiment)):  # the lock goes with the process, however it ended
        pass


def test_a_taken_experiment_name_is_refused_when_checked_and_a_failed_start_leaves_nothing(tmp_path):
    from search.errors import SweepError
    from search.study.experiment import new_experiment

    experiment = str(tmp_path / "runs" / "x")
    with pytest.raises(RuntimeError), new_experiment(experiment):
        assert Path(experiment).is_dir()  # claimed at once: a second run of the name stops at mkdir
        with pytest.raises(SweepError, match="exists already"), new_experiment(experiment):
            pass
        raise RuntimeError("the study's data could not be read")
    assert not Path(experiment).exists()  # nothing written for a refused start
    started = time.time()
    with new_experiment(experiment):
        (Path(experiment) / "sweep.json").write_text("{}")
    assert Path(experiment, "sweep.json").is_file() and time.time() - started < 5
