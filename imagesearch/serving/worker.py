"""Two worker threads run every forward pass and index search of a service, batching what waits:
one encodes, the other searches and pages, so batch N+1 is encoded while batch N is searched.

Why so few threads: torch, faiss and BLAS each keep an OpenMP team per calling thread, and idle teams
spin. Calls from a pool of request threads leave several teams spinning against each other on few cores
(measured: a text query took 51 ms instead of 19 ms). Here the encoder thread runs ONNX Runtime (its
own pool, spinning off) or torch, and the search thread runs faiss and the page's BLAS products on one
thread each, because a single query gains nothing from more. Why two stages: at 1M vectors one
thread spent ~11 ms per distinct text query (encode ~5, search and page ~6) and so capped the service
near 90 queries/s while the second core idled between the stages. Why batches: queries that arrive
while a batch runs are encoded and searched together on the next pass, which costs far less per query
than one pass each (260 vs 44 texts/s at batch 32 vs 1, benchmarks/bench_encoders.py).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from imagesearch.index.search import limit_search_threads
from imagesearch.serving.types import Answer, BadQuery, PageRequest, Query


class BatchAnswerer(Protocol):
    """What the worker needs of a service: encode a batch of queries (whatever that returns is
    handed, untouched, to the search), then search and page it."""

    def encode_batch(
        self, queries: list[Query], pages: list[PageRequest], timings: dict[str, float]
    ) -> Any: ...

    def search_batch(
        self, encoded: Any, pages: list[PageRequest], timings: dict[str, float]
    ) -> list[Answer | BadQuery]: ...


@dataclass(slots=True)
class _Job:
    query: Query
    page: PageRequest
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class _Encoded:
    """A batch between the stages."""

    jobs: list[_Job]
    encoded: Any
    timings: dict[str, float]
    started: float  # when its encode began
    done_at: float  # when its encode ended


class QueryWorker:
    """Answers queries for one service on its own two threads; started on first use."""

    def __init__(self, service: BatchAnswerer, max_batch: int = 32, timeout_s: float = 60.0) -> None:
        self.service, self.max_batch, self.timeout_s = service, max_batch, timeout_s
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # one encoded batch waits for the search at most: the encoder gathers the next one meanwhile
        self.encoded: queue.Queue[_Encoded | None] = queue.Queue(maxsize=1)
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.closed = False

    def submit(self, query: Query, page: PageRequest) -> Answer:
        return self.enqueue(query, page).result(timeout=self.timeout_s)

    def enqueue(self, query: Query, page: PageRequest) -> Future:
        """The answer to come, without waiting for it (an event loop awaits it instead of a thread)."""
        job = _Job(query, page)
        with self.lock:
            if self.closed:  # a request that picked this service just before a swap: answer it here
                self._answer_here(job)
                return job.future
            if not self.threads:
                self.threads = [
                    threading.Thread(target=self._encode_loop, name="query-encoder", daemon=True),
                    threading.Thread(target=self._search_loop, name="query-searcher", daemon=True),
                ]
                for thread in self.threads:
                    thread.start()
            self.jobs.put(job)
        return job.future

    def close(self) -> None:
        """Finish the queued jobs, then stop; later submissions are answered on the caller's thread."""
        with self.lock:
            self.closed = True
            if self.threads:
                self.jobs.put(None)

    def _encode_loop(self) -> None:
        while (first := self.jobs.get()) is not None:
            batch, stop = self._gather(first)
            self._encode(batch)
            if stop:
                break
        self.encoded.put(None)  # the search stops after the batches before it

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and whatever else waits (up to max_batch); True when close() came among them."""
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _encode(self, batch: list[_Job]) -> None:
        # a caller that gave up (its timeout cancelled the future) is not answered: no work for it
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started, timings = time.perf_counter(), {}
        try:
            encoded = self.service.encode_batch([j.query for j in batch], [j.page for j in batch], timings)
        except Exception as error:  # the callers get the error; the worker keeps serving
            _fail(batch, error)
            return
        self.encoded.put(_Encoded(batch, encoded, timings, started, time.perf_counter()))

    def _search_loop(self) -> None:
        limit_search_threads(1)  # per thread: only this worker's searches are affected
        # numpy's BLAS pool is per process: the re-rank's small products lose more to waking and
        # spinning threads than they gain from them, most of all on a loaded machine
        threadpool_limits(1, user_api="blas")
        while (batch := self.encoded.get()) is not None:
            between = time.perf_counter() - batch.done_at
            try:
                answers = self.service.search_batch(
                    batch.encoded, [j.page for j in batch.jobs], batch.timings
                )
            except Exception as error:
                _fail(batch.jobs, error)
                continue
            _resolve(batch.jobs, answers, batch.timings, batch.started, between)

    def _answer_here(self, job: _Job) -> None:
        """Both stages on the calling thread (after close)."""
        if not job.future.set_running_or_notify_cancel():
            return
        started, timings = time.perf_counter(), {}
        try:
            encoded = self.service.encode_batch([job.query], [job.page], timings)
            answers = self.service.search_batch(encoded, [job.page], timings)
        except Exception as error:
            _fail([job], error)
            return
        _resolve([job], answers, timings, started, 0.0)


def _fail(jobs: list[_Job], error: Exception) -> None:
    for job in jobs:
        job.future.set_exception(error)


def _resolve(
    jobs: list[_Job],
    answers: list[Answer | BadQuery],
    timings: dict[str, float],
    started: float,
    between: float,
) -> None:
    """Each caller its answer, with the batch's timings; `queue` is the wait before the encode plus
    the wait between the stages."""
    for job, answer in zip(jobs, answers, strict=True):
        if isinstance(answer, BadQuery):  # this query alone cannot be answered (its terms cancel)
            job.future.set_exception(answer)
            continue
        waited = (started - job.queued_at + between) * 1000
        answer.timings_ms = {"queue": round(waited, 3), **timings, "batch": len(jobs)}
        job.future.set_result(answer)
