"""Every file and folder the service writes goes through here: written beside its target under a temporary name,
flushed to disk, renamed into place, so a reader sees the old version or the whole new one, never half a file.

A failure (a full disk, an exception in the caller's writer) removes the temporary file or folder and leaves the
target as it was. What a killed process leaves behind (``.sweep-tmp-HOST-PID-...``) is removed by the next write into
the same folder once that process is gone (same host), or after ``STALE_AFTER_S`` (another host's, on shared disks).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from data_pipeline.errors import DataError

TMP_PREFIX = ".sweep-tmp-"
STALE_AFTER_S = 24 * 3600  # another host's leftover: no pid to check, so age decides
RESCAN_AFTER_S = 60.0  # a folder is searched for leftovers at most this often per process (thousands of writes
# into one folder would otherwise list it thousands of times)
_last_scan: dict[str, float] = {}
_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
_TMP_NAME = re.compile(rf"^{re.escape(TMP_PREFIX)}([A-Za-z0-9]*)-(\d+)-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())


def _tmp_prefix() -> str:
    return f"{TMP_PREFIX}{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def is_leftover(name: str, age_s: float, host: str, alive: Callable[[int], bool] = _pid_alive) -> bool:
    """Whether ``name`` is a temporary file or folder of a writer that is gone: this host's whose pid is dead, or
    another host's older than STALE_AFTER_S (pure given ``alive``)."""
    match = _TMP_NAME.match(name)
    if match is None:
        return False
    if match[1] == host:
        return not alive(int(match[2]))
    return age_s > STALE_AFTER_S


def clean_leftovers(folder: str | Path) -> list[Path]:
    """Remove what killed writers left in ``folder`` (unless this process searched it in the last RESCAN_AFTER_S);
    return what was removed."""
    removed = []
    now, host = time.time(), _host()
    if now - _last_scan.get(str(folder), -RESCAN_AFTER_S) < RESCAN_AFTER_S:
        return removed
    _last_scan[str(folder)] = now
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.startswith(TMP_PREFIX):
                continue
            with contextlib.suppress(OSError):
                if is_leftover(entry.name, now - entry.stat(follow_symlinks=False).st_mtime, host):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _not_written(path: Path, exc: OSError) -> DataError:
    reason = exc.strerror or type(exc).__name__
    return DataError(f"{path}: could not be written ({reason}); disk full or not writable?", path)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``data`` (bytes, or a function writing to a binary file) goes to a temporary file
    in the same folder, which is flushed, fsynced and renamed over ``path``, then the folder is fsynced. On any
    failure the temporary file is removed and ``path`` is left as it was; an OSError becomes a DataError naming it."""
    path = Path(path)
    folder = path.parent
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clean_leftovers(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_tmp_prefix(), suffix=".part")
        with os.fdopen(fd, "wb") as out:
            if callable(data):
                data(out)
            else:
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # an ordinary file once in place (mkstemp makes it private)
        os.replace(tmp, path)
        tmp = None
        _fsync(folder)
    except OSError as exc:
        raise _not_written(path, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def publish_folder(target: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` to fill; when the block ends, every file in it is fsynced and it is
    renamed ``target`` in one step (``target`` must not exist, or be an empty folder). On any failure, or when
    another process published ``target`` first, the temporary folder is removed; the latter raises a DataError
    saying ``target`` exists."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(target.parent)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=_tmp_prefix()))
        staging.chmod(0o777 & ~_umask())  # an ordinary folder once in place (mkdtemp makes it private)
    except OSError as exc:
        raise _not_written(target, exc) from None
    try:
        try:
            yield staging
        except OSError as exc:
            if exc.errno in _FULL_OR_READ_ONLY or str(exc.filename or "").startswith(str(staging)):
                raise _not_written(target, exc) from None  # the caller's own writes into the folder failed
            raise  # something else (a download, a read): as it is
        try:
            _fsync_tree(staging)
            os.rename(staging, target)  # replaces an empty folder; fails on a full one (another writer won)
            _fsync(target.parent)
        except OSError as exc:
            if target.is_dir() and any(target.iterdir()):
                raise DataError(
                    f"{target} exists and is not empty (written meanwhile by another process)", target
                ) from None
            raise _not_written(target, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder, name))
        _fsync(Path(folder))


def encode_image(image: np.ndarray, suffix: str = ".png", rgb: bool = True) -> bytes:
    """The bytes of an image file (uint8 RGB, or gray when 2-D; ``rgb=False``: already in OpenCV's BGR order) in
    the format ``suffix`` names; a DataError when OpenCV cannot encode it."""
    import cv2

    if rgb and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        ok, encoded = cv2.imencode(suffix, image)
    except cv2.error:
        ok = False
    if not ok:
        raise DataError(f"OpenCV cannot write this image as {suffix!r}; use .png")
    return encoded.tobytes()


def write_image(path: str | Path, image: np.ndarray, rgb: bool = True) -> Path:
    """Write an image in the format its suffix names, atomically (see encode_image, write_file); a DataError naming
    the path when it cannot be encoded or written (a full disk, a read-only folder)."""
    path = Path(path)
    return write_file(path, encode_image(image, path.suffix or ".png", rgb))


def data_folders(data_dir: str | Path | None) -> dict[Path, str]:
    """{real folder: what it is} that a study's ``data_dir`` protects: the folder itself, or a CSV manifest's
    folder; none for the embedded synthetic set (see refuse_inside)."""
    if data_dir is None:
        return {}
    where = Path(data_dir).expanduser().resolve()
    return {where if where.is_dir() else where.parent: "the study's data folder"}


def refuse_inside(target: str | Path, folders: dict[Path, str], flag: str) -> Path:
    """``target``'s real path, after checking it is not (inside) any of ``folders`` ({real folder: what it is});
    a DataError saying which otherwise. Symlinks are resolved on both sides."""
    target = Path(target).expanduser().resolve()
    for folder, what in folders.items():
        if target.is_relative_to(folder):
            raise DataError(
                f"{flag} {target} is inside {what} {folder}, which is never written: choose a folder outside it",
                target,
            )
    return target
