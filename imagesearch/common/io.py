"""Atomic writes and content ids: the one way every stage writes a file or a folder.

A reader (the service, a sensor, a resumed run) must only ever see the previous version of an output
or the next one, whole. Files are written to a hidden sibling and renamed over the target
(`os.replace` is atomic on one file system); folders are filled in a staging sibling and swapped in
with two renames, the old one retired only once the new one is in place.
"""

from __future__ import annotations

import hashlib
import os
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
    staging = folder.with_name(f".{folder.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = folder.with_name(f".{folder.name}.retired-{os.getpid()}")
    if folder.exists():
        os.rename(folder, retired)
    os.rename(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)
