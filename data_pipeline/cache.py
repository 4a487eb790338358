"""The cache folder (``$SWEEP_CACHE_DIR`` or ``~/.cache/leukemia-sweep``): what each kind of entry is, folders made
private, and ``sweep cache``'s sizes per kind, clearing a kind, and trimming to a size cap least recently used first.

Every kind is rebuilt on demand, so removing entries costs time, never results. The folder must stay private: JAX's
compilation cache loads native code from ``jax-compile/``, and decoded arrays and features are read back as they are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import DataError

# Each kind's folder name and what one entry of it is.
KINDS = {
    "costs": "one architecture's deployment cost measured on this machine, a search's cost objective (a file)",
    "decoded": "a dataset's decoded, resized images and masks (a folder)",
    "duplicates": "a dataset's clusters of exact and near-duplicate images (a file)",
    "features": "a frozen backbone: its weights and the features of every image it has seen (a folder)",
    "jax-compile": "one program compiled by JAX (a file)",
    "synthetic": "an embedded synthetic dataset (a folder)",
}
# Files that belong to another entry (suffix -> the entry's suffix): a feature file's lock, JAX's last-used stamp.
_SIDECARS = {".lock": "", "-atime": "-cache"}
_IN_PROGRESS = "."  # a write not yet renamed into place (``.tmp-...``): neither listed nor trimmed


def default_cache_dir() -> Path:
    return Path(os.environ.get("SWEEP_CACHE_DIR", Path.home() / ".cache" / "leukemia-sweep"))


def cache_folder(kind: str, cache_dir: str | Path | None = None) -> Path:
    """The folder of ``kind`` (one of ``KINDS``) under ``cache_dir`` (default: ``default_cache_dir()``), created
    private (0700) with the cache folder itself when they do not exist yet."""
    root = Path(cache_dir or default_cache_dir())
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = root / kind
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def mark_used(path: Path) -> None:
    """Record that a cache entry was just read (its modification time orders the trim), if it still exists."""
    with contextlib.suppress(OSError):  # removed meanwhile, or a read-only cache: the order is only a hint
        os.utime(path)


# ---- entries and their sizes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    kind: str
    paths: tuple[Path, ...]  # the entry and its sidecar files
    size: int  # bytes, every file under it
    used: float  # the latest modification time of its paths (seconds since the epoch)


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())


def _owner(name: str) -> str:
    """The entry a file belongs to (a sidecar's entry, otherwise itself)."""
    for suffix, entry_suffix in _SIDECARS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + entry_suffix
    return name


def entries(kind: str, cache_dir: str | Path | None = None) -> list[Entry]:
    """The entries of ``kind`` in the cache folder (none when the folder does not exist)."""
    folder = Path(cache_dir or default_cache_dir()) / kind
    if not folder.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(_IN_PROGRESS):
            groups.setdefault(_owner(path.name), []).append(path)
    out = []
    for paths in groups.values():
        try:
            out.append(Entry(kind, tuple(paths), sum(map(_size, paths)), max(p.lstat().st_mtime for p in paths)))
        except FileNotFoundError:
            continue  # removed while we looked (another process trimming, a damaged entry being rebuilt)
    return out


def usage(cache_dir: str | Path | None = None) -> list[dict]:
    """One row per kind: entries, bytes, and when an entry was last used (None: empty)."""
    rows = []
    for kind in KINDS:
        found = entries(kind, cache_dir)
        last = max((e.used for e in found), default=None)
        rows.append({"kind": kind, "entries": len(found), "bytes": sum(e.size for e in found), "last_used": last})
    return rows


# ---- clearing and trimming ------------------------------------------------------------------------------------------


def clear(kind: str, cache_dir: str | Path | None = None) -> int:
    """Remove every entry of ``kind`` (or of every kind with ``all``); return the bytes freed. Only the cache's own
    kind folders are ever removed."""
    if kind != "all" and kind not in KINDS:
        raise DataError(f"--clear {kind!r}: not a kind of cache entry; choose one of {', '.join(KINDS)} or all")
    root = Path(cache_dir or default_cache_dir())
    freed = 0
    for name in KINDS if kind == "all" else (kind,):
        folder = root / name
        if folder.is_symlink() or (folder.exists() and folder.resolve().parent != root.resolve()):
            raise DataError(f"{folder} is a link out of the cache folder {root}: remove it by hand if you mean to")
        freed += sum(e.size for e in entries(name, root))
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def to_evict(found: list[Entry], max_bytes: int) -> list[Entry]:
    """The entries to remove to bring their total to ``max_bytes`` or less: least recently used first."""
    total, out = sum(e.size for e in found), []
    for entry in sorted(found, key=lambda e: e.used):
        if total <= max_bytes:
            break
        out.append(entry)
        total -= entry.size
    return out


def trim(max_bytes: int, cache_dir: str | Path | None = None) -> list[Entry]:
    """Remove least recently used entries of every kind until the cache holds ``max_bytes`` or less; the removed."""
    evicted = to_evict([e for kind in KINDS for e in entries(kind, cache_dir)], max_bytes)
    for entry in evicted:
        for path in entry.paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return evicted


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes in a size such as ``5GB``, ``500 MB``, ``1.5GiB`` or ``1024`` (KB, MB, GB, TB are powers of 1000;
    KiB, MiB, GiB, TiB of 1024)."""
    match = _SIZE.fullmatch(text)
    unit = match and match.group(2).upper()
    if not match or unit not in _UNITS:
        raise DataError(f"--max-size {text!r}: not a size; write a number and a unit, e.g. 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def human(size: float) -> str:
    """Bytes in the largest unit that keeps the number at least 1 (1000s: as ``parse_size`` reads GB)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# ---- trust ----------------------------------------------------------------------------------------------------------


def open_to_others(path: str | Path) -> bool:
    """Whether the folder ``path`` exists and its group or anyone else may write in it."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def shared_warning(path: str | Path, what: str, why: str) -> str | None:
    """One warning line when the folder ``path`` can be written by others, else None."""
    if not open_to_others(path):
        return None
    mode = stat.filemode(Path(path).stat().st_mode)
    return f"warning: {what} {path} can be written by other users ({mode}): {why}; make it private: chmod 700 {path}"


CACHE_WHY = "JAX's compilation cache loads native code from it"


def cache_warning(cache_dir: str | Path | None = None) -> str | None:
    return shared_warning(Path(cache_dir or default_cache_dir()), "the cache folder", CACHE_WHY)


def when(seconds: float | None) -> str:
    """A last-used time as the table shows it."""
    return "–" if seconds is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))
