"""An index folder on disk: written whole into a staging sibling and swapped in, read back complete.

The manifest is written last, so a folder without one is never loaded: a kill at any moment leaves
the previous index (or none) to serve, never a half-written one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from imagesearch.common.executor import Executor, ShardSearch
from imagesearch.common.io import folder_atomic
from imagesearch.index.delta import Delta, base_digest, delta_digest, read_delta
from imagesearch.index.keywords import KEYWORDS_FILE, KeywordIndex, write_keyword_index
from imagesearch.index.metadata import RowMetadata, with_metadata_columns
from imagesearch.index.search import (
    EXACT_SUBSET_ROWS,
    exact_subset,
    id_selector,
    keep_allowed,
    merge_top_k,
    rerank_exact,
    search,
    takes_selector,
    widen_for_filter,
)

INDEX_FILE, IDS_FILE, VECTORS_FILE, MANIFEST_FILE = (
    "index.faiss",
    "ids.parquet",
    "vectors.npy",
    "manifest.json",
)
PREFIX_STEP = 64  # prefix views of a Flat index come in widths of this step (see _exact_view)
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
    """A complete index folder as served: the base index, plus the delta published beside it since
    (rows added after the base's rows, searched exactly; rows removed, never returned)."""

    index: faiss.Index | None  # None when the shards are searched instead (`sharded`)
    manifest: IndexManifest
    ids: pd.DataFrame  # row -> id, path and metadata: the base's rows, then the delta's added rows
    vectors: np.ndarray  # float16 memmap: exact re-scoring without holding float32 copies in RAM
    sharded: ShardSearch | None = None
    delta: Delta | None = None
    folder: Path | None = None  # where it was loaded from (its keyword index lives there)
    exact_subset_rows: int = EXACT_SUBSET_ROWS  # a filter keeping at most this many: exact search
    metadata: RowMetadata = field(init=False)
    keywords: KeywordIndex = field(init=False)
    removed: np.ndarray | None = field(init=False, default=None)  # per row: deleted by the delta
    prefix_views: dict[int, faiss.IndexFlat] = field(init=False, default_factory=dict)  # see _exact_view

    def __post_init__(self) -> None:
        self.metadata = RowMetadata(self.ids)
        base_keywords = [self.folder / KEYWORDS_FILE] if self.folder else []
        if self.delta is not None:
            self.removed = self.ids["id"].isin(self.delta.removed_ids).to_numpy()
            base_keywords.append(self.delta.keywords)
        self.keywords = KeywordIndex(base_keywords)

    @property
    def ntotal(self) -> int:
        """Rows, removed ones included (positions run over all of them)."""
        return len(self.ids)

    @property
    def base_count(self) -> int:
        return len(self.vectors)

    @property
    def live_count(self) -> int:
        return self.ntotal - (int(self.removed.sum()) if self.removed is not None else 0)

    @property
    def live_ids(self) -> pd.Series:
        return self.ids["id"] if self.removed is None else self.ids["id"][~self.removed]

    def allowed(self, mask: np.ndarray | None) -> np.ndarray | None:
        """The rows a search may return: `mask` (a filter) without the removed rows; None = all."""
        if self.removed is None or not self.removed.any():
            return mask
        return ~self.removed if mask is None else mask & ~self.removed

    def candidate_vectors(self, positions: np.ndarray) -> np.ndarray:
        """float32 vectors at `positions` for the service's re-score and diversity re-rank: decoded
        from the index's own re-rank tier when it has one (the tier its budget counts), else read
        from the float16 memory map; delta rows from the delta's vectors."""
        positions = np.asarray(positions, dtype=np.int64)
        in_delta = positions >= self.base_count
        out = np.empty((len(positions), self.manifest.dim), np.float32)
        base = positions[~in_delta]
        # Flat: the exact float32 rows; IndexRefine: its scalar codes, by row
        if isinstance(self.index, faiss.IndexIVFPQR | faiss.IndexRefine | faiss.IndexFlat):
            out[~in_delta] = self.index.reconstruct_batch(base) if len(base) else 0
        else:
            out[~in_delta] = self.vectors[base]
        if in_delta.any():
            out[in_delta] = self.delta.vectors[positions[in_delta] - self.base_count]
        return out

    def search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the top-k among the rows `mask` keeps (all when None), never a
        removed row; -1 positions pad a query with fewer than k rows to return."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = self.allowed(mask)
        base_allowed = None if allowed is None else allowed[: self.base_count]
        found = [self._search_base(queries, k, base_allowed)]
        if self.delta is not None and len(self.delta.vectors):
            delta_rows = np.arange(len(self.delta.vectors))
            if allowed is not None:
                delta_rows = delta_rows[allowed[self.base_count :]]
            scores, rows = exact_subset(queries, self.delta.vectors, delta_rows, k)
            found.append((scores, np.where(rows >= 0, rows + self.base_count, -1)))
        return merge_top_k(found, k)

    def _search_base(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        if allowed is None:
            return self._search_all(queries, k)
        rows = np.flatnonzero(allowed)
        if len(rows) <= self.exact_subset_rows:  # a selective filter: exact over its rows is cheap and whole
            return exact_subset(queries, self.vectors, rows, k)
        if self.sharded is None and takes_selector(self.index):
            widened = widen_for_filter(self.manifest.kind, self.manifest.params, len(rows) / len(allowed))
            scores, positions = self._search_all(queries, k, id_selector(allowed), widened)
        else:  # shards and IndexIVFPQR take no selector: read deeper, keep the allowed rows
            depth = min(len(allowed), k * -(-len(allowed) // len(rows)) * 2)
            scores, positions = keep_allowed(*self._search_all(queries, depth), allowed, k)
        short = (positions >= 0).sum(axis=1) < min(k, len(rows))
        if short.any():  # the ANN missed rows the filter keeps: those queries get the exact answer
            scores[short], positions[short] = exact_subset(queries[short], self.vectors, rows, k)
        return scores, positions

    def _search_all(
        self,
        queries: np.ndarray,
        k: int,
        selector: faiss.IDSelector | None = None,
        params: dict[str, int] | None = None,
    ):
        rerank = self.vectors if self.manifest.rerank_factor > 1 else None
        if self.sharded is not None:
            depth = min(self.base_count, k * self.manifest.rerank_factor if rerank is not None else k)
            scores, positions = self.sharded.search(queries, depth)
            return (scores, positions) if rerank is None else rerank_exact(queries, positions, rerank, k)
        index, queries = self._exact_view(queries)
        return search(
            index,
            self.manifest.kind,
            queries,
            k,
            params or self.manifest.params,
            vectors=rerank,
            rerank_factor=self.manifest.rerank_factor,
            selector=selector,
        )

    def _exact_view(self, queries: np.ndarray) -> tuple[faiss.Index, np.ndarray]:
        """The index to search and the queries as it takes them: for exact (Flat) search of queries
        that are zero beyond their first columns — text queries of a model that appends raw image
        features to image vectors (1280 of 1664 columns) — a Flat index over those columns only: the
        same scores from a quarter of the bytes. Other indexes, and queries using most columns,
        search the whole index, as do L2 indexes (a zero query column still adds the row's value)."""
        inner_product = getattr(self.index, "metric_type", None) == faiss.METRIC_INNER_PRODUCT
        if not isinstance(self.index, faiss.IndexFlat) or not inner_product:
            return self.index, queries
        used = np.flatnonzero(np.abs(queries).max(axis=0))
        width = -(-(int(used[-1]) + 1 if len(used) else 1) // PREFIX_STEP) * PREFIX_STEP
        if width > self.manifest.dim // 2:
            return self.index, queries
        if width not in self.prefix_views:  # built once per width (the first text query: the warm-up)
            view = faiss.IndexFlat(width, self.index.metric_type)
            view.add(np.ascontiguousarray(self.index.reconstruct_n(0, self.index.ntotal)[:, :width]))
            self.prefix_views[width] = view
        return self.prefix_views[width], np.ascontiguousarray(queries[:, :width])


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
        ids = with_metadata_columns(ids)
        ids.to_parquet(staging / IDS_FILE, index=False)
        write_keyword_index(staging / KEYWORDS_FILE, RowMetadata(ids))
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
    """A digest of the folder's manifest and its delta's (each written last, each swapped in whole):
    it changes with every build and every live update."""
    try:
        digest = base_digest(folder)
    except FileNotFoundError:
        return None
    return f"{digest}+{delta_digest(folder)}"


def read_manifest(folder: Path) -> IndexManifest:
    return IndexManifest(**json.loads((folder / MANIFEST_FILE).read_text()))


def load_index(folder: Path, executor: Executor | None = None) -> LoadedIndex:
    """The complete index in `folder`; with an `executor` and shard files, its shards are searched by
    the executor's shard searchers instead of loading the whole index here."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no complete index in {folder} (manifest.json missing): build one first")
    manifest = read_manifest(folder)
    ids = with_metadata_columns(pd.read_parquet(folder / IDS_FILE))
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
    delta = read_delta(folder)
    if delta is not None:
        ids = pd.concat([ids, with_metadata_columns(delta.added)], ignore_index=True)
    if not ids["id"].is_unique:
        raise ValueError(f"index in {folder} maps one id to several vectors")
    return LoadedIndex(index, manifest, ids, vectors, sharded, delta, folder)
