"""An index folder on disk: written whole into a staging sibling and swapped in, read back complete.

The manifest is written last, so a folder without one is never loaded: a kill at any moment leaves
the previous index (or none) to serve, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from imagesearch.common.executor import Executor, ShardSearch
from imagesearch.common.io import folder_atomic
from imagesearch.index.search import rerank_exact, search

INDEX_FILE, IDS_FILE, VECTORS_FILE, MANIFEST_FILE = (
    "index.faiss",
    "ids.parquet",
    "vectors.npy",
    "manifest.json",
)
SHARDS_FOLDER = "shards"  # shards/shard-000.faiss ...: the same index cut in S for sharded serving


# --- persistence -----------------------------------------------------------------------------------
@dataclass(slots=True)
class IndexManifest:
    kind: str
    factory: str
    dim: int
    count: int
    params: dict[str, int]
    rerank_factor: int
    recall_at_10: float
    latency_ms: float
    bytes_per_vector: float
    model: str
    reason: str
    extra: dict = field(default_factory=dict)


@dataclass(slots=True)
class LoadedIndex:
    index: faiss.Index | None  # None when the shards are searched instead (`sharded`)
    manifest: IndexManifest
    ids: pd.DataFrame
    vectors: np.ndarray  # float16 memmap: exact re-scoring without holding float32 copies in RAM
    sharded: ShardSearch | None = None

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    def candidate_vectors(self, positions: np.ndarray) -> np.ndarray:
        """float32 vectors at `positions` for the service's re-score and diversity re-rank: decoded
        from the index's own re-rank tier when it has one (the tier its budget counts), else read
        from the float16 memory map."""
        if isinstance(self.index, faiss.IndexIVFPQR):
            return self.index.reconstruct_batch(np.asarray(positions, dtype=np.int64))
        return np.asarray(self.vectors[positions], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rerank = self.vectors if self.manifest.rerank_factor > 1 else None
        if self.sharded is not None:
            depth = min(self.ntotal, k * self.manifest.rerank_factor if rerank is not None else k)
            scores, positions = self.sharded.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
            return (scores, positions) if rerank is None else rerank_exact(queries, positions, rerank, k)
        return search(
            self.index,
            self.manifest.kind,
            queries,
            k,
            self.manifest.params,
            vectors=rerank,
            rerank_factor=self.manifest.rerank_factor,
        )


def save_index_atomic(
    folder: Path,
    index: faiss.Index,
    manifest: IndexManifest,
    ids: pd.DataFrame,
    vectors: np.ndarray,
    *,
    check: Callable[[Path], None] | None = None,
    shards: list[tuple[faiss.Index, int]] = (),
) -> Path:
    """Readers see the old index or the new one, whole; the manifest is written last, marking it
    complete. `check` reads the complete staged folder: if it raises, nothing is published.
    `shards`: (index, first row) of each shard, kept beside the whole index for sharded serving."""
    with folder_atomic(folder) as staging:
        faiss.write_index(index, str(staging / INDEX_FILE))
        manifest.extra["index_file_bytes"] = (staging / INDEX_FILE).stat().st_size
        if shards:
            manifest.extra["shards"] = _write_shards(staging, shards)
        ids.to_parquet(staging / IDS_FILE, index=False)
        np.save(staging / VECTORS_FILE, vectors.astype(np.float16))
        (staging / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
        if check is not None:
            check(staging)
    return folder


def _write_shards(staging: Path, shards: list[tuple[faiss.Index, int]]) -> list[dict]:
    (staging / SHARDS_FOLDER).mkdir()
    written = []
    for number, (shard, offset) in enumerate(shards):
        name = f"{SHARDS_FOLDER}/shard-{number:03d}.faiss"
        faiss.write_index(shard, str(staging / name))
        written.append({"file": name, "offset": int(offset), "count": int(shard.ntotal)})
    return written


def index_fingerprint(folder: Path) -> str | None:
    """A digest of the folder's manifest (written last, swapped in whole): it changes with every build."""
    try:
        return hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return None


def load_index(folder: Path, executor: Executor | None = None) -> LoadedIndex:
    """The complete index in `folder`; with an `executor` and shard files, its shards are searched by
    the executor's shard searchers instead of loading the whole index here."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no complete index in {folder} (manifest.json missing): build one first")
    manifest = IndexManifest(**json.loads(manifest_path.read_text()))
    ids = pd.read_parquet(folder / IDS_FILE)
    vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
    shards = manifest.extra.get("shards") if executor is not None else None
    if shards:
        files, offsets = [folder / s["file"] for s in shards], [s["offset"] for s in shards]
        sharded = executor.shard_search(files, offsets, manifest.kind, manifest.params)
        index, total, dim = None, sharded.ntotal, manifest.dim
    else:
        sharded, index = None, faiss.read_index(str(folder / INDEX_FILE))
        total, dim = index.ntotal, index.d
        if isinstance(index, faiss.IndexIVFPQR):  # candidates are decoded by id: 8 B/vector
            index.make_direct_map()
    if total != len(ids) or len(vectors) != len(ids):
        raise ValueError(f"index in {folder} is inconsistent: {total} vectors, {len(ids)} ids")
    if len(ids) and not (dim == manifest.dim == vectors.shape[1]):
        raise ValueError(
            f"index in {folder} is inconsistent: manifest says {manifest.dim}-d, the index holds "
            f"{dim}-d and the vectors file {vectors.shape[1]}-d"
        )
    if not ids["id"].is_unique:
        raise ValueError(f"index in {folder} maps one id to several vectors")
    return LoadedIndex(index, manifest, ids, vectors, sharded)
