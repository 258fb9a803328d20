"""The query path of the search service, without any web framework.

encode (text / image bytes / raw vector) -> ANN top-N -> exact re-score of the candidates from the
index's float16 vectors -> near-duplicate collapse -> MMR diversity re-rank -> one page of results,
with the model version that served them and the time spent in each stage."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from cachetools import LRUCache
from PIL import Image

from imagesearch.common.executor import executor_for
from imagesearch.common.images import WHITE, ImageRejected, decode_limits
from imagesearch.index.store import LoadedIndex, index_fingerprint, load_index
from imagesearch.models.encoders import Encoder
from imagesearch.models.registry import load_encoder
from imagesearch.serving.rerank import collapse_near_duplicates, mmr
from imagesearch.serving.types import Answer, BadQuery, PageRequest, Query, Result
from imagesearch.serving.worker import QueryWorker
from imagesearch.settings import Settings


class SearchService:
    """One model + the index built with it: a pair that is always swapped together."""

    def __init__(self, encoder: Encoder, index: LoadedIndex, paths: pd.Series, settings: Settings):
        if index.manifest.count and index.vectors.shape[1] != encoder.dim:
            raise ValueError(
                f"index holds {index.vectors.shape[1]}-d vectors, the model makes {encoder.dim}-d"
            )
        config = settings.service
        self.encoder, self.index, self.paths, self.config = encoder, index, paths, config
        self.model_version = index.manifest.model
        # id -> row, built once: "more like this" must not scan every id per request
        self.positions = pd.Index(index.ids["id"].to_numpy())
        self.row_ids = index.ids["id"].to_numpy()  # row -> id, as a plain array for the answer loop
        limits = decode_limits(settings.catalog, max_file_bytes=config.max_upload_bytes)
        self.limits = replace(limits, max_image_pixels=min(limits.max_image_pixels, config.max_upload_pixels))
        # each decode may hold a few full-size copies: only so many at once, whatever clients send
        self.decodes = threading.BoundedSemaphore(config.max_concurrent_decodes)
        self.roots = image_roots(index, settings)
        self.worker = QueryWorker(self, max_batch=config.max_batch, timeout_s=config.answer_timeout_s)
        # text -> vector of this pair's model (a swap brings a new service, so a new cache); only the
        # worker thread touches it
        self.text_vectors: LRUCache | None = (
            LRUCache(config.text_cache_size) if config.text_cache_size else None
        )
        self.fingerprint: str | None = None  # of the index folder it was loaded from (see from_index)

    @classmethod
    def from_index(cls, settings: Settings, index_dir: Path | None = None) -> SearchService:
        """An index (default: the workspace's) and the model it was built with (from its manifest).

        Images resolve through the index's own id -> path map, so a bring-your-own index serves too.
        With `cluster.index_shards` > 1, an index kept in shards is searched by the executor's shard
        searchers (Ray actors on a cluster), which fan each query batch out and merge the top-k.
        """
        folder = index_dir or settings.search_index_dir
        fingerprint = index_fingerprint(folder)
        sharded = settings.cluster.index_shards > 1
        index = load_index(folder, executor_for(settings) if sharded else None)
        encoder = load_encoder(index.manifest.model, settings)
        service = cls(encoder, index, index.ids.set_index("id")["path"], settings)
        service.fingerprint = fingerprint
        if settings.service.warm_up:
            service.warm_up()
        return service

    def warm_up(self) -> None:
        """A text and an image query through the worker before the first client's: ONNX Runtime
        allocates and the index pages in on first use, which would otherwise land on that client."""
        if not self.index.ntotal:
            return
        # pandas builds an index's hash table on its first lookup: O(n), ~0.25 s at 1M ids
        self.caption_of(str(self.row_ids[0]))
        self.positions.get_loc(self.row_ids[0])
        blank = Image.new("RGB", (self.encoder.spec.image_size,) * 2, WHITE)
        page = PageRequest(k=10, offset=0, diversity=self.config.diversity, dedup=True)
        for query in (Query(pixels=self.encoder.preprocessor(blank)), Query(text="warm up")):
            self.answer(query, page)
        if self.text_vectors is not None:
            self.text_vectors.clear()

    # --- preparing a query (request threads: validation and image decoding run in parallel) -----
    def text_query(self, text: str) -> Query:
        text = text.strip()
        if not text:
            raise BadQuery("the text query is empty")
        if len(text) > self.config.max_text_chars:
            raise BadQuery(
                f"the text query has {len(text)} characters; the limit is {self.config.max_text_chars}"
            )
        return Query(text=text)

    def image_query(self, data: bytes, timings: dict[str, float] | None = None) -> Query:
        """Decode + preprocess (timed as "decode"); the forward pass runs later, on the worker."""
        if len(data) > self.config.max_upload_bytes:
            raise BadQuery(f"the image has {len(data)} bytes; the limit is {self.config.max_upload_bytes}")
        started = time.perf_counter()
        try:
            with self.decodes:
                pixels = self.encoder.preprocessor(data, self.limits)
        except ImageRejected as error:
            raise BadQuery(f"the upload is not a usable image ({error.reason})") from error
        if timings is not None:
            timings["decode"] = _ms(started)
        return Query(pixels=pixels)

    def vector_query(self, values: list[float]) -> Query:
        vector = np.asarray(values, dtype=np.float32)
        if vector.shape != (self.encoder.dim,):
            raise BadQuery(f"the embedding has {vector.size} values; this model makes {self.encoder.dim}")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise BadQuery("the embedding must be finite and non-zero")
        return Query(vector=vector / norm)

    def similar_query(self, image_id: str) -> Query:
        """ "More like this": the indexed vector of a catalog image."""
        if image_id not in self.positions:
            raise BadQuery(f"no indexed image with id {image_id!r}")
        vector = self.index.candidate_vectors(np.array([self.positions.get_loc(image_id)]))[0]
        return Query(vector=vector / np.linalg.norm(vector))

    # --- answering ------------------------------------------------------------------------------
    def answer(self, query: Query, page: PageRequest) -> Answer:
        """Encode, search and re-rank on the worker thread, batched with whatever else is waiting."""
        return self.worker.submit(query, page)

    def encode(self, queries: list[Query], timings: dict[str, float]) -> np.ndarray:
        """One matrix of unit query vectors: the texts in one batch, the images in another."""
        started = time.perf_counter()
        vectors = np.zeros((len(queries), self.encoder.dim), np.float32)
        texts = [i for i, q in enumerate(queries) if q.text is not None]
        images = [i for i, q in enumerate(queries) if q.pixels is not None]
        given = [i for i, q in enumerate(queries) if q.vector is not None]
        if texts:
            vectors[texts] = self._text_vectors([queries[i].text for i in texts])
        if images:
            vectors[images] = self.encoder.encode_pixels(torch.stack([queries[i].pixels for i in images]))
        if given:
            vectors[given] = np.stack([queries[i].vector for i in given])
        timings["encode"] = _ms(started)
        return vectors

    def _text_vectors(self, texts: list[str]) -> np.ndarray:
        """Encoded texts, from the LRU cache where seen before (popular queries repeat)."""
        cache = self.text_vectors
        if cache is None:
            return self.encoder.encode_texts(texts)
        found = {text: cache[text] for text in texts if text in cache}
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        if missing:
            for text, vector in zip(missing, self.encoder.encode_texts(missing), strict=True):
                found[text] = cache[text] = vector
        return np.stack([found[text] for text in texts])

    def search_many(
        self, vectors: np.ndarray, pages: list[PageRequest], timings: dict[str, float]
    ) -> list[Answer]:
        """ANN for the queries of one depth in one call, then the exact re-score and re-rank of each:
        a deep page costs its own query, not the whole batch."""
        started = time.perf_counter()
        total = self.index.ntotal
        depths = np.array([min(max(self.config.candidates, (p.offset + p.k) * 2), total) for p in pages])
        found: list[np.ndarray] = [np.empty(0, np.int64)] * len(pages)
        for depth in np.unique(depths):
            rows = np.flatnonzero(depths == depth)
            _, positions = self.index.search(vectors[rows], int(depth))
            for row, row_positions in zip(rows, positions, strict=True):
                found[row] = row_positions
        timings["ann"] = _ms(started)
        started = time.perf_counter()
        answers = [
            self._rerank(vector, positions, page)
            for vector, positions, page in zip(vectors, found, pages, strict=True)
        ]
        timings["rerank"] = _ms(started)
        return answers

    def _rerank(self, vector: np.ndarray, positions: np.ndarray, page: PageRequest) -> Answer:
        positions = positions[positions >= 0]
        candidates = self.index.candidate_vectors(positions)
        scores = candidates @ vector
        order = np.argsort(-scores, kind="stable")
        positions, candidates, scores = positions[order], candidates[order], scores[order]
        if page.dedup:
            keep = collapse_near_duplicates(candidates, self.config.dedup_threshold)
            positions, candidates, scores = positions[keep], candidates[keep], scores[keep]
        picked = mmr(scores, candidates, page.offset + page.k, page.diversity)[page.offset :]
        results = [
            Result(str(self.row_ids[positions[i]]), float(scores[i]), page.offset + rank)
            for rank, i in enumerate(picked, start=1)
        ]
        return Answer(results, self.model_version)

    def close(self) -> None:
        """Stop the worker once its queue is answered (after a swap has replaced this pair)."""
        self.worker.close()
        # Shard searcher actors are not killed here (queued jobs may still need them): Ray ends them
        # when this pair, the last holder of their handles, is collected.

    def path_of(self, image_id: str) -> Path | None:
        """The file of a catalog image, or None: only catalog ids resolve, never a client path, and
        only to a file inside the index's image roots as it is now (a source file since replaced by
        a symlink to elsewhere is not served)."""
        path = self.paths.get(image_id)
        if not isinstance(path, str):
            return None
        real = Path(path).resolve()
        return real if any(real.is_relative_to(root) for root in self.roots) else None

    def caption_of(self, image_id: str) -> str:
        """A readable caption: the file name without extension (the index keeps no captions)."""
        path = self.path_of(image_id)
        return path.stem.replace("_", " ") if path else ""


def image_roots(index: LoadedIndex, settings: Settings) -> list[Path]:
    """Where the served images may live: the folder a bring-your-own index was built from, else the
    workspace's catalog sources."""
    source = index.manifest.extra.get("source")
    folders = [Path(source)] if source else [s.path for s in settings.effective_sources]
    return [Path(folder).expanduser().resolve() for folder in folders]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
