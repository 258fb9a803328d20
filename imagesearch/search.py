"""Bring-your-own-images search: index a folder, then answer text / image / batch queries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from imagesearch.embed import embed_folder
from imagesearch.encoders import Encoder
from imagesearch.index import (
    IndexManifest,
    LoadedIndex,
    build_index,
    choose_index,
    gpu_available,
    save_index_atomic,
    tune,
)
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
    frame, vectors = _drop_duplicate_ids(frame, vectors)
    config = settings.index
    budget = config.memory_budget_mb * 2**20 if config.memory_budget_mb else None
    choice = choose_index(
        len(vectors),
        vectors.shape[1],
        memory_budget_bytes=budget,
        latency_budget_ms=config.latency_budget_ms,
        gpu=gpu_available(),
        hnsw_m=config.hnsw_m,
    )
    index = build_index(vectors, choice, train_sample=config.train_sample)
    rerank = config.rerank_factor if "PQ" in choice.factory else 1
    queries = vectors[
        np.random.default_rng(0).choice(len(vectors), min(config.tune_queries, len(vectors)), False)
    ]
    tuned = tune(
        index, choice.kind, vectors, queries, target_recall=config.target_recall, rerank_factor=rerank
    )
    manifest = IndexManifest(
        kind=choice.kind,
        factory=choice.factory,
        dim=int(vectors.shape[1]),
        count=len(vectors),
        params=tuned.params,
        rerank_factor=rerank,
        recall_at_10=tuned.recall_at_10,
        latency_ms=tuned.latency_ms,
        bytes_per_vector=choice.bytes_per_vector,
        model=model,
        reason=choice.reason,
        extra={
            "rejected": dict(rejected),
            "source": str(images.resolve()),
            "reached_target": tuned.reached_target,
        },
    )
    save_index_atomic(out, index, manifest, frame, vectors)
    return manifest


def _drop_duplicate_ids(frame, vectors):
    keep = ~frame["id"].duplicated().to_numpy()
    return frame[keep].reset_index(drop=True), vectors[keep]


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
