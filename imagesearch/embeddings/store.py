"""Embedding storage, content-addressed by (model version, image id).

``embeddings/<model key>/shard-<k>.parquet`` holds the ids and vectors of catalog shard k (the first
hex digit of the id, so an image never changes shard). The writer keeps old rows still in the catalog,
adds new ones, sorts by id and swaps the file in atomically.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imagesearch.common.io import write_atomic


def write_embeddings(frame: pd.DataFrame, matrix: np.ndarray, out: Path, dtype: str = "float32") -> None:
    """Parquet with the frame's columns plus a fixed-size list column `embedding` (float32 or float16)."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"embedding dtype must be float32 or float16, not {dtype!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    flat = pa.array(matrix.astype(dtype).ravel(), type=pa.from_numpy_dtype(np.dtype(dtype)))
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]))
    pq.write_table(table, out)


def read_embeddings(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    matrix = column.flatten().to_numpy().reshape(len(table), column.type.list_size)
    return table.drop(["embedding"]).to_pandas(), matrix


SHARD_KEYS = tuple("0123456789abcdef")
ROUTING_MARKER = "routing.json"  # in a model's embeddings folder: its encoder routes per collection


def mark_routing(embeddings: Path, specialist_columns: slice) -> None:
    """Note in a model's embeddings folder that an index of them must be routed (the index step then
    loads the encoder; other models' indexes never need it)."""
    embeddings.mkdir(parents=True, exist_ok=True)
    (embeddings / ROUTING_MARKER).write_text(json.dumps({"specialist_columns": str(specialist_columns)}))


def routes(embeddings: Path) -> bool:
    return (embeddings / ROUTING_MARKER).is_file()


def shard_of(image_id: str) -> str:
    return image_id[0]


def model_key(reference: str) -> str:
    """Folder name for a pinned model reference: 'models:/imagesearch/3' -> 'imagesearch-v3'.

    Other references (an encoder folder, 'v0') get their last name plus a hash of the whole reference.
    """
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", reference)
    if match:
        return f"{match[1]}-v{match[2]}"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(reference).name).strip("_") or "model"
    return f"{name}-{hashlib.blake2b(reference.encode(), digest_size=4).hexdigest()}"


def shard_path(folder: Path, shard: str) -> Path:
    return folder / f"shard-{shard}.parquet"


def read_shard(folder: Path, shard: str, dim: int) -> tuple[list[str], np.ndarray]:
    path = shard_path(folder, shard)
    if not path.exists():
        return [], np.zeros((0, dim), np.float32)
    frame, matrix = read_embeddings(path)
    if matrix.shape[1] != dim:
        raise ValueError(f"{path} holds {matrix.shape[1]}-d vectors, the model makes {dim}-d: delete it")
    return frame["id"].tolist(), matrix


def write_shard(
    folder: Path,
    shard: str,
    existing: tuple[list[str], np.ndarray],
    new: list[tuple[list[str], np.ndarray]],
    wanted: set[str],
    dtype: str,
) -> int:
    """Writer: old rows still in the catalog + new rows, sorted by id; returns how many were dropped."""
    old_ids, old_vectors = existing
    keep = np.array([image_id in wanted for image_id in old_ids], dtype=bool)
    dropped = int((~keep).sum())
    if not new and not dropped and shard_path(folder, shard).exists():
        return 0
    ids = np.array([i for i, k in zip(old_ids, keep, strict=True) if k] + [i for b, _ in new for i in b])
    matrix = np.concatenate([old_vectors[keep], *(vectors for _, vectors in new)])
    order = np.argsort(ids, kind="stable")
    frame = pd.DataFrame({"id": ids[order].astype(str)})
    write_atomic(
        shard_path(folder, shard), lambda staging: write_embeddings(frame, matrix[order], staging, dtype)
    )
    return dropped


def read_model_embeddings(folder: Path, ids: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """float32 vectors for `ids` (in that order) and the ids that have none yet."""
    shards = [read_embeddings(p) for p in sorted(folder.glob("shard-*.parquet"))]
    if not shards:
        return np.zeros((0, 0), np.float32), ids
    frame = pd.concat([f for f, _ in shards], ignore_index=True)
    matrix = np.concatenate([m for _, m in shards]).astype(np.float32)
    position = pd.Series(np.arange(len(frame)), index=frame["id"])
    found = ids.isin(position.index)
    return matrix[position[ids[found]].to_numpy()], ids[~found]
