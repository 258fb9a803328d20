"""The query path of the search service, without any web framework.

encode (each term: text / image bytes / raw vector; their weighted sum) -> candidates from the ANN
index (filters applied inside it) and, in keyword or hybrid mode, from the keyword index -> one page
(serving/ranking.py: exact re-score, score cut-off, near-duplicate collapse, MMR or date order, facets,
explanations), with the model version that served it and the time spent in each stage."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
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
from imagesearch.serving.ranking import KEYWORD, VECTOR, Ranker, combine
from imagesearch.serving.types import Answer, BadQuery, Encoded, PageRequest, Query
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
        self.encoder, self.index, self.config = encoder, index, config
        self.model_version = index.manifest.model
        # id -> row, built once: "more like this" must not scan every id per request
        self.positions = pd.Index(index.ids["id"].to_numpy())
        self.row_ids = index.ids["id"].to_numpy()  # row -> id, as a plain array for the answer loop
        # row -> path, a plain array: a pandas lookup per result cost ~40 us (ten per page) at 1M ids
        self.row_paths = paths.reindex(self.row_ids).to_numpy()
        limits = decode_limits(settings.catalog, max_file_bytes=config.max_upload_bytes)
        self.limits = replace(limits, max_image_pixels=min(limits.max_image_pixels, config.max_upload_pixels))
        # each decode may hold a few full-size copies: only so many at once, whatever clients send
        self.decodes = threading.BoundedSemaphore(config.max_concurrent_decodes)
        self.roots = image_roots(index, settings)
        self.worker = QueryWorker(self, max_batch=config.max_batch, timeout_s=config.answer_timeout_s)
        # text -> vector of this pair's model (a swap brings a new service, so a new cache); only the
        # worker's encoder thread touches it
        self.text_vectors: LRUCache | None = (
            LRUCache(config.text_cache_size) if config.text_cache_size else None
        )
        self.fingerprint: str | None = None  # of the index folder it was loaded from (see from_index)
        self.ranker = Ranker(index, self.row_ids, config.dedup_threshold, config.near_duplicate_table_rows)
        # keyword lookups need a query's words, not its vector: they run here while the worker
        # encodes (SQLite and ONNX Runtime both release the GIL), one thread so one reader at a time
        self.keyword_lookups = ThreadPoolExecutor(1, thread_name_prefix="keyword-lookup")

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
        for query in (Query.of(pixels=self.encoder.preprocessor(blank)), Query.of(text="warm up")):
            self.answer(query, page)
        self.answer(Query.of(text="warm up"), replace(page, mode="hybrid"))  # opens the keyword index
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
        return Query.of(text=text)

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
        return Query.of(pixels=pixels)

    def vector_query(self, values: list[float]) -> Query:
        vector = np.asarray(values, dtype=np.float32)
        if vector.shape != (self.encoder.dim,):
            raise BadQuery(f"the embedding has {vector.size} values; this model makes {self.encoder.dim}")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise BadQuery("the embedding must be finite and non-zero")
        return Query.of(vector=vector / norm)

    def similar_query(self, image_id: str) -> Query:
        """ "More like this": the indexed vector of a catalog image."""
        if image_id not in self.positions:
            raise BadQuery(f"no indexed image with id {image_id!r}")
        position = self.positions.get_loc(image_id)
        if self.index.removed is not None and self.index.removed[position]:
            raise BadQuery(f"the image {image_id!r} was removed from the catalog")
        vector = self.index.candidate_vectors(np.array([position]))[0]
        return Query.of(vector=vector / np.linalg.norm(vector))

    # --- answering ------------------------------------------------------------------------------
    def answer(self, query: Query, page: PageRequest) -> Answer:
        """Encode, then search and re-rank, on the worker's two threads, batched with whatever else waits."""
        return self.worker.submit(query, page)

    def encode_batch(
        self, queries: list[Query], pages: list[PageRequest], timings: dict[str, float]
    ) -> tuple[list[Encoded | BadQuery], Future]:
        """The worker's first stage: the batch's keyword candidates asked for on their own thread,
        then its vectors encoded meanwhile."""
        keywords = self.keyword_lookups.submit(self._keyword_candidates, queries, pages)
        return self.encode(queries, timings), keywords

    def search_batch(
        self,
        encoded: tuple[list[Encoded | BadQuery], Future],
        pages: list[PageRequest],
        timings: dict[str, float],
    ) -> list[Answer | BadQuery]:
        """The worker's second stage: vector candidates, the keyword ones joined, and the pages."""
        queries, keywords = encoded
        return self.search_many(queries, pages, timings, keywords)

    def encode(self, queries: list[Query], timings: dict[str, float]) -> list[Encoded | BadQuery]:
        """Each query's unit vector, from its terms' vectors: every text term of the batch encoded
        in one call, every image term in another."""
        started = time.perf_counter()
        terms = [term for query in queries for term in query.terms]
        vectors = np.zeros((len(terms), self.encoder.dim), np.float32)
        texts = [i for i, t in enumerate(terms) if t.text is not None]
        images = [i for i, t in enumerate(terms) if t.pixels is not None]
        given = [i for i, t in enumerate(terms) if t.vector is not None]
        if texts:
            vectors[texts] = self._text_vectors([terms[i].text for i in texts])
        if images:
            vectors[images] = self.encoder.encode_pixels(torch.stack([terms[i].pixels for i in images]))
        if given:
            vectors[given] = np.stack([terms[i].vector for i in given])
        encoded, first = [], 0
        for query in queries:
            term_vectors = vectors[first : first + len(query.terms)]
            first += len(query.terms)
            encoded.append(combine(query, term_vectors))
        timings["encode"] = _ms(started)
        return encoded

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
        self,
        queries: list[Encoded | BadQuery],
        pages: list[PageRequest],
        timings: dict[str, float],
        keywords: Future | None = None,
    ) -> list[Answer | BadQuery]:
        """Vector and keyword candidates of each query, then its page: queries of one depth and no
        filter share one ANN call; a deep page or a filter costs its own query, not the batch's.
        `keywords`: the keyword candidates already asked for (`_keyword_candidates`), else looked up here."""
        started = time.perf_counter()
        ready = [i for i, q in enumerate(queries) if isinstance(q, Encoded)]
        depths = {i: self._depth(pages[i]) for i in ready}
        by_vector = self._vector_candidates(queries, pages, depths)
        timings["ann"] = _ms(started)
        lookup = keywords.result() if keywords else self._keyword_candidates(queries, pages)
        by_keyword, timings["keywords"] = lookup
        started = time.perf_counter()
        answers = [
            query
            if isinstance(query, BadQuery)
            else self.ranker.page(query, by_vector.get(i), by_keyword.get(i), pages[i], depths[i])
            for i, query in enumerate(queries)
        ]
        timings["rerank"] = _ms(started)
        return answers

    def _depth(self, page: PageRequest) -> int:
        """How many candidates a page draws from each list: twice what it shows, at least the setting."""
        return min(max(self.config.candidates, (page.offset + page.k) * 2), self.index.ntotal)

    def _keyword_candidates(
        self, queries: list[Query | Encoded | BadQuery], pages: list[PageRequest]
    ) -> tuple[dict[int, np.ndarray], float]:
        """(query -> keyword hits, ms spent) for the queries whose mode reads keywords."""
        started = time.perf_counter()
        found = {
            i: self.index.keywords.search(
                query.keyword_text, self._depth(pages[i]), self.index.allowed(pages[i].mask)
            )[0]
            for i, query in enumerate(queries)
            if pages[i].mode != VECTOR and not isinstance(query, BadQuery)
        }
        return found, _ms(started)

    def _vector_candidates(
        self, queries: list, pages: list[PageRequest], depths: dict[int, int]
    ) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        plain = [i for i in depths if pages[i].mode != KEYWORD and pages[i].mask is None]
        for depth in sorted({depths[i] for i in plain}):
            rows = [i for i in plain if depths[i] == depth]
            _, positions = self.index.search(np.stack([queries[i].vector for i in rows]), depth)
            found.update(zip(rows, positions, strict=True))
        for i in depths:
            if pages[i].mode != KEYWORD and pages[i].mask is not None:
                found[i] = self.index.search(queries[i].vector[None], depths[i], pages[i].mask)[1][0]
        return found

    def close(self) -> None:
        """Stop the worker once its queue is answered (after a swap has replaced this pair)."""
        self.worker.close()
        # the keyword thread is not shut down: a request that picked this pair just before the swap
        # is still answered by it; the thread ends when this pair is collected
        # Shard searcher actors are not killed here (queued jobs may still need them): Ray ends them
        # when this pair, the last holder of their handles, is collected.

    def path_of(self, image_id: str) -> Path | None:
        """The file of a catalog image, or None: only catalog ids resolve, never a client path, and
        only to a file inside the index's image roots as it is now (a source file since replaced by
        a symlink to elsewhere is not served)."""
        try:
            path = self.row_paths[self.positions.get_loc(image_id)]
        except KeyError:
            return None
        if not isinstance(path, str):
            return None
        real = Path(path).resolve()
        return real if any(real.is_relative_to(root) for root in self.roots) else None

    def caption_of(self, image_id: str) -> str:
        """A readable caption: the catalog's caption, else its title, else the file's name (as the
        index holds it: a caption needs no look at the file system, ~45 us a result)."""
        position = self.positions.get_loc(image_id)
        metadata = self.index.metadata
        known = metadata.caption[position] or metadata.title[position]
        if known:
            return known
        path = self.row_paths[position]
        return Path(path).stem.replace("_", " ") if isinstance(path, str) else ""

    def shown_metadata(self, image_id: str) -> dict:
        """What a result shows besides its caption: category, tags and catalogue time."""
        position = self.positions.get_loc(image_id)
        metadata = self.index.metadata
        added = int(metadata.added_ns[position])
        return {
            "category": metadata.category[position],
            "tags": list(metadata.tags[position]),
            "added": datetime.fromtimestamp(added / 1e9, UTC) if added else None,
        }


def image_roots(index: LoadedIndex, settings: Settings) -> list[Path]:
    """Where the served images may live: the folder a bring-your-own index was built from, else the
    workspace's catalog sources."""
    source = index.manifest.extra.get("source")
    folders = [Path(source)] if source else [s.path for s in settings.effective_sources]
    return [Path(folder).expanduser().resolve() for folder in folders]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
