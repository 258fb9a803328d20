"""Ad-hoc embedding of an image folder or some texts (`imagesearch embed`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from imagesearch.catalog import content_id
from imagesearch.encoders import Encoder
from imagesearch.images import DecodeLimits, ImageRejected
from imagesearch.settings import CatalogSettings, SourceSettings
from imagesearch.sources import scan_source


@dataclass(slots=True)
class EmbedSummary:
    rows: int
    dim: int
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)


def embed_folder(
    encoder: Encoder, folder: Path, *, batch_size: int, limits: CatalogSettings
) -> tuple[pd.DataFrame, np.ndarray, Counter]:
    """(id/path rows, vectors, rejected reasons) for every decodable image under `folder`."""
    decode_limits = DecodeLimits(limits.max_image_pixels, limits.min_side, limits.max_file_bytes)
    files = list(scan_source(SourceSettings(name="images", path=folder), limits.extensions))
    rows, vectors, rejected, pending = [], [], Counter(), []
    for file in tqdm(files, desc="embedding images", unit="img"):
        data = file.path.read_bytes()
        try:
            pending.append(encoder.preprocessor(data, decode_limits))
        except ImageRejected as error:
            rejected[str(error.reason)] += 1
            continue
        rows.append({"id": content_id(data), "path": str(file.path)})
        if len(pending) == batch_size:
            vectors.append(encoder.encode_pixels(torch.stack(pending)))
            pending = []
    if pending:
        vectors.append(encoder.encode_pixels(torch.stack(pending)))
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), np.float32)
    return pd.DataFrame(rows, columns=["id", "path"]), matrix, rejected


def embed_image_folder(
    encoder: Encoder, folder: Path, out: Path, *, batch_size: int, limits: CatalogSettings
) -> EmbedSummary:
    """Embed every decodable image under `folder` into a parquet file; unusable files are counted."""
    frame, matrix, rejected = embed_folder(encoder, folder, batch_size=batch_size, limits=limits)
    write_embeddings(frame, matrix, out)
    return EmbedSummary(len(frame), encoder.dim, sum(rejected.values()), dict(rejected))


def embed_texts(encoder: Encoder, texts: list[str], out: Path) -> EmbedSummary:
    matrix = encoder.encode_texts(texts)
    write_embeddings(pd.DataFrame({"text": texts}), matrix, out)
    return EmbedSummary(len(texts), encoder.dim)


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
