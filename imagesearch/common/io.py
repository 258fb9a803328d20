"""Atomic writes and content ids: the one way every stage writes a file or a folder.

A reader (the service, a sensor, a resumed run) must only ever see the previous version of an output
or the next one, whole. Files are written to a hidden sibling and renamed over the target
(`os.replace` is atomic on one file system); folders are filled in a staging sibling, flushed to disk,
and exchanged with the target in one `renameat2(RENAME_EXCHANGE)`: a kill at any instant leaves the
old folder or the new one in place, never neither. Leftovers of writers that died are removed by the
next writer.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

ID_BYTES = 16  # 128-bit content hash: collisions are out of reach for any real collection


def content_id(data: bytes) -> str:
    """Stable id of an image: a hash of its bytes, so the same file gets the same id anywhere."""
    return hashlib.blake2b(data, digest_size=ID_BYTES).hexdigest()


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(staging_path)` into a hidden sibling, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(path)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    write_atomic(path, lambda staging: frame.to_parquet(staging, index=False))


@contextmanager
def folder_atomic(folder: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `folder` whole, on error it is removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(folder)
    staging = folder.with_name(f".{folder.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_tree(staging)
    if folder.exists() and _exchange(staging, folder):
        _fsync_dir(folder.parent)
        shutil.rmtree(staging, ignore_errors=True)  # now the old version
        return
    retired = folder.with_name(f".{folder.name}.retired-{os.getpid()}")
    if folder.exists():  # a file system without RENAME_EXCHANGE: two renames (see restore below)
        os.rename(folder, retired)
    os.rename(staging, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(retired, ignore_errors=True)


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|retired|tmp)-(?P<pid>\d+)$")


def remove_dead_leftovers(folder: Path) -> list[Path]:
    """Staging, retired and temporary siblings of `folder` (a folder or a file) whose writer is dead:
    removed, except that a retired version is put back when a kill between two renames left no
    `folder` at all."""
    removed = []
    for sibling in folder.parent.glob(f".{folder.name}.*-*"):
        match = _LEFTOVER.match(sibling.name)
        if not match or match["name"] != folder.name or _alive(int(match["pid"])):
            continue
        if match["kind"] == "retired" and not folder.exists():
            os.rename(sibling, folder)
            continue
        if sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100
_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system or file system cannot."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _fsync_tree(folder: Path) -> None:
    """Flush every file (and the folders) of a staged output before it is published."""
    for path in [*folder.rglob("*"), folder]:
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
