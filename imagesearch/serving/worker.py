"""One worker thread runs every forward pass and index search of a service, batching what waits.

Why one thread: torch, faiss and BLAS each keep an OpenMP team per calling thread, and idle teams spin.
Calls from a pool of request threads leave several teams spinning against each other on few cores
(measured: a text query took 51 ms instead of 19 ms). One thread keeps one team per library, with
faiss limited to one thread because a single query gains nothing from more. Why batches: queries that
arrive while a batch runs are encoded and searched together on the next pass, which costs far less
per query than one pass each (260 vs 44 texts/s at batch 32 vs 1, benchmarks/bench_encoders.py).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from threadpoolctl import threadpool_limits

from imagesearch.index.search import limit_search_threads
from imagesearch.serving.types import Answer, BadQuery, PageRequest, Query


class BatchAnswerer(Protocol):
    """What the worker needs of a service: encode a batch of queries, search and re-rank them."""

    def answer_batch(
        self, queries: list[Query], pages: list[PageRequest], timings: dict[str, float]
    ) -> list[Answer | BadQuery]: ...


@dataclass(slots=True)
class _Job:
    query: Query
    page: PageRequest
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class QueryWorker:
    """Answers queries for one service on its own thread; started on first use."""

    def __init__(self, service: BatchAnswerer, max_batch: int = 32, timeout_s: float = 60.0) -> None:
        self.service, self.max_batch, self.timeout_s = service, max_batch, timeout_s
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.closed = False

    def submit(self, query: Query, page: PageRequest) -> Answer:
        return self.enqueue(query, page).result(timeout=self.timeout_s)

    def enqueue(self, query: Query, page: PageRequest) -> Future:
        """The answer to come, without waiting for it (an event loop awaits it instead of a thread)."""
        job = _Job(query, page)
        with self.lock:
            if self.closed:  # a request that picked this service just before a swap: answer it here
                self._answer([job])
                return job.future
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="query-worker", daemon=True)
                self.thread.start()
            self.jobs.put(job)
        return job.future

    def close(self) -> None:
        """Finish the queued jobs, then stop; later submissions are answered on the caller's thread."""
        with self.lock:
            self.closed = True
            if self.thread is not None:
                self.jobs.put(None)

    def _run(self) -> None:
        limit_search_threads(1)  # per thread: only this worker's searches are affected
        # numpy's BLAS pool is per process: the re-rank's small products lose more to waking and
        # spinning threads than they gain from them, most of all on a loaded machine
        threadpool_limits(1, user_api="blas")
        while (first := self.jobs.get()) is not None:
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[_Job]) -> None:
        # a caller that gave up (its timeout cancelled the future) is not answered: no work for it
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            queries, pages = [job.query for job in batch], [job.page for job in batch]
            answers = self.service.answer_batch(queries, pages, timings)
        except Exception as error:  # the callers get the error; the worker keeps serving
            for job in batch:
                job.future.set_exception(error)
            return
        for job, answer in zip(batch, answers, strict=True):
            if isinstance(answer, BadQuery):  # this query alone cannot be answered (its terms cancel)
                job.future.set_exception(answer)
                continue
            waited = (started - job.queued_at) * 1000
            answer.timings_ms = {"queue": round(waited, 3), **timings, "batch": len(batch)}
            job.future.set_result(answer)
