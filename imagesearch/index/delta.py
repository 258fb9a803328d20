"""Live index updates: the images added to and removed from the catalog since the base index was
built, kept in `delta/` inside the index folder and published whole (written into a staging folder
and swapped in), so a reader sees the previous delta or the new one, never a part.

Added rows are searched exactly beside the base index (their recall is 1); removed rows are masked
out of every search. A delta is cumulative (all changes since the base), so each update replaces
the previous one; when it grows past the limits in `IndexSettings`, the step rebuilds the base.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.common.io import folder_atomic
from imagesearch.index.keywords import KEYWORDS_FILE, write_keyword_index
from imagesearch.index.metadata import RowMetadata

DELTA_FOLDER = "delta"
BASE_MANIFEST = "manifest.json"
ADDED_FILE, VECTORS_FILE, REMOVED_FILE, MANIFEST_FILE = (
    "added.parquet",
    "vectors.npy",
    "removed.parquet",
    "manifest.json",
)


@dataclass(frozen=True, slots=True)
class Delta:
    added: pd.DataFrame  # id, path and metadata of each added row, in row order after the base
    vectors: np.ndarray  # float32 unit vectors of the added rows
    removed_ids: pd.Index  # ids of base rows no longer in the catalog
    keywords: Path  # the FTS5 file of the added rows
    manifest: dict


def base_digest(folder: Path) -> str:
    """The base index's identity: a digest of its manifest (every build writes a new one)."""
    return hashlib.sha256((folder / BASE_MANIFEST).read_bytes()).hexdigest()[:16]


def write_delta(
    folder: Path, added: pd.DataFrame, vectors: np.ndarray, removed_ids: list[str], base_count: int
) -> dict:
    """Publish the delta of the base index in `folder`: `added` rows (with `vectors`) and the ids
    removed since the base; the manifest is written last, marking it complete."""
    manifest = {
        "base": base_digest(folder),
        "added": len(added),
        "removed": len(removed_ids),
        "written_at": time.time(),
    }
    with folder_atomic(folder / DELTA_FOLDER) as staging:
        added.reset_index(drop=True).to_parquet(staging / ADDED_FILE, index=False)
        np.save(staging / VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float32))
        pd.DataFrame({"id": list(removed_ids)}, dtype="string").to_parquet(staging / REMOVED_FILE)
        write_keyword_index(staging / KEYWORDS_FILE, RowMetadata(added), first_row=base_count)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_delta(folder: Path) -> Delta | None:
    """The complete delta of the base in `folder`, or None (no delta, or one of an older base)."""
    delta = folder / DELTA_FOLDER
    try:
        manifest = json.loads((delta / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return None
    if manifest.get("base") != base_digest(folder):
        return None
    added = pd.read_parquet(delta / ADDED_FILE)
    vectors = np.load(delta / VECTORS_FILE)
    if len(vectors) != len(added):
        raise ValueError(f"the delta in {delta} is inconsistent: {len(vectors)} vectors, {len(added)} ids")
    removed = pd.Index(pd.read_parquet(delta / REMOVED_FILE)["id"])
    return Delta(added, vectors, removed, delta / KEYWORDS_FILE, manifest)


def delta_digest(folder: Path) -> str:
    """A digest of the delta's manifest ('' without one): part of the served folder's fingerprint."""
    try:
        return hashlib.sha256((folder / DELTA_FOLDER / MANIFEST_FILE).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return ""
