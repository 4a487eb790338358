"""Where experiments live: a local folder or a cloud URI (``s3://bucket/prefix``, ``gs://...``, ``file:///...``).

Ray Tune writes trials there itself (multi-node runs need shared storage: Ray stopped syncing to the head node in
2.7). The sweep's own files (sweep.json, results.csv, results.json) go through the same pyarrow filesystem, so a
sweep submitted to a cluster with ``--storage s3://...`` keeps everything in one place.
"""

from __future__ import annotations

import os
from pathlib import Path

from data_pipeline.files import write_file
from search.errors import SweepError


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def normalize(location: str | os.PathLike) -> str:
    """An absolute local path, or the URI unchanged (without a trailing slash)."""
    if is_uri(location):
        return str(location).rstrip("/")
    return str(Path(location).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts]) if is_uri(location) else str(Path(location, *parts))


def _fs(location: str):
    import pyarrow.fs

    if not is_uri(location):
        return pyarrow.fs.LocalFileSystem(), location
    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid: an unknown scheme; OSError: a client it cannot load
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SweepError(
            f"{location}: not a storage location this machine can use ({reason}); give a local folder or a file://, "
            "s3:// or gs:// URI"
        ) from None


def exists(location: str) -> bool:
    import pyarrow.fs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def subfolders(location: str) -> list[str]:
    """Names of the folders directly inside ``location`` (sorted; none if it does not exist)."""
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        return []
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)


def makedirs(location: str) -> None:
    fs, path = _fs(location)
    fs.create_dir(path, recursive=True)


def remove_tree(location: str) -> None:
    """Delete a folder and everything in it."""
    fs, path = _fs(location)
    fs.delete_dir(path)


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file; local files are replaced atomically and fsynced (a reader never sees half a file)."""
    if not is_uri(location):
        write_file(location, data)
        return
    fs, path = _fs(location)
    with fs.open_output_stream(path) as out:
        out.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def read_bytes(location: str) -> bytes:
    fs, path = _fs(location)
    with fs.open_input_stream(path) as src:
        return src.read()


def upload(local_dir: str | Path, location: str) -> None:
    """Copy a local folder to ``location`` (a folder or a URI)."""
    import pyarrow.fs

    fs, path = _fs(location)
    pyarrow.fs.copy_files(str(local_dir), path, destination_filesystem=fs)


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def download(location: str, local_dir: str | Path) -> Path:
    """A copy of a remote folder under ``local_dir`` (a local folder is returned as it is)."""
    if not is_uri(location):
        return Path(location)
    import pyarrow.fs

    fs, path = _fs(location)
    pyarrow.fs.copy_files(path, str(local_dir), source_filesystem=fs)
    return Path(local_dir)
