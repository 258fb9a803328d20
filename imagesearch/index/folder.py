"""Bring-your-own-images search: index a folder, then answer text / image / batch queries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from imagesearch.embeddings.adhoc import embed_folder
from imagesearch.index.build import build_tuned_index
from imagesearch.index.metadata import folder_metadata
from imagesearch.index.routing import route_vectors
from imagesearch.index.store import IndexManifest, LoadedIndex
from imagesearch.models.encoders import Encoder
from imagesearch.settings import Settings


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    path: str
    score: float


def build_folder_index(
    encoder: Encoder, images: Path, out: Path, *, model: str, settings: Settings
) -> IndexManifest:
    """Embed every image under `images`, choose + build + tune an index, write it atomically to `out`."""
    frame, vectors, rejected = embed_folder(encoder, images, batch_size=32, limits=settings.catalog)
    if len(frame) == 0:
        raise ValueError(f"no decodable images under {images} (rejected: {dict(rejected) or 'none found'})")
    keep = ~frame["id"].duplicated().to_numpy()
    routed, routing = route_vectors(encoder, vectors[keep])
    extra = {"rejected": dict(rejected), "source": str(images.resolve()), **routing}
    return build_tuned_index(
        routed,
        folder_metadata(frame[keep].reset_index(drop=True), images.resolve()),
        out,
        model=model,
        config=settings.index,
        extra=extra,
    )


def read_queries(path: Path) -> Iterator[dict]:
    """JSONL queries: each line {"text": ...} or {"image": path}; bad lines raise with their number."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            query = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from error
        if not isinstance(query, dict) or len(set(query) & {"text", "image"}) != 1:
            raise ValueError(
                f'{path}:{number}: expected {{"text": ...}} or {{"image": path}}, got {line.strip()}'
            )
        yield query


def embed_query(encoder: Encoder, query: dict) -> np.ndarray:
    if "text" in query:
        text = str(query["text"]).strip()
        if not text:
            raise ValueError("empty text query")
        return encoder.encode_texts([text])
    return encoder.encode_images([Path(query["image"])])


def search_queries(encoder: Encoder, loaded: LoadedIndex, queries: list[dict], k: int) -> list[list[Hit]]:
    vectors = np.concatenate([embed_query(encoder, query) for query in queries])
    scores, positions = loaded.search(vectors, k)
    return [
        [
            Hit(str(loaded.ids.at[int(p), "id"]), str(loaded.ids.at[int(p), "path"]), float(s))
            for s, p in zip(row_scores, row_positions, strict=True)
            if p >= 0
        ]
        for row_scores, row_positions in zip(scores, positions, strict=True)
    ]


def hits_as_json(query: dict, hits: list[Hit]) -> str:
    return json.dumps({"query": query, "results": [asdict(hit) for hit in hits]})
