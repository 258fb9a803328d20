"""Ad-hoc embedding of an image folder or some texts (`imagesearch embed`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from imagesearch.catalog.sources import scan_source
from imagesearch.common.images import ImageRejected, RejectReason, decode_limits
from imagesearch.common.io import content_id
from imagesearch.embeddings.store import write_embeddings
from imagesearch.models.encoders import Encoder
from imagesearch.settings import CatalogSettings, SourceSettings


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
    decode = decode_limits(limits)
    files = list(scan_source(SourceSettings(name="images", path=folder), limits.extensions))
    rows, vectors, rejected, pending = [], [], Counter(), []
    for file in tqdm(files, desc="embedding images", unit="img"):
        if file.escapes_source:  # a symlink out of the folder: never indexed, so never served
            rejected[str(RejectReason.OUTSIDE_SOURCE)] += 1
            continue
        data = file.path.read_bytes()
        try:
            pending.append(encoder.preprocessor(data, decode))
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
