"""The impression/click log: a real SQL database (SQLite by default, any SQLAlchemy URL). Its tables
and rows are `log_schema`'s.

The search service writes it; `click_pairs` and online metrics read it.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from imagesearch.feedback.log_schema import (
    FRAMES,
    TABLES,
    Bundle,
    LogTables,
    clicks_table,
    impressions_table,
    metadata,
    queries_table,
    query_bundle,
    spooled_bundle,
    typed_row,
)


class UnknownQuery(LookupError):
    """A click names a query id the log has never shown, or a rank it did not show."""


def _sqlite_write_ahead(connection, _record) -> None:
    """WAL + synchronous=NORMAL: a commit no longer waits for fsync (it took ~10 ms of every search),
    readers do not block the writer, and a crash loses at most the last commits, never the file."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


WRITE_ATTEMPTS = 5


def _connect_args(url: str, busy_timeout_s: float) -> dict:
    return {"timeout": busy_timeout_s, "check_same_thread": False} if url.startswith("sqlite") else {}


class ClickLog:
    """Writes and reads the log; the tables are created on first use.

    A query's rows never fail the search that showed them: a write that still fails after retries
    (a locked or unreachable database) goes to a JSON-lines spool file beside the database, replayed
    into it by the next write that succeeds.

    `background`: a query's rows are queued and written by one writer thread in batches, so a search
    does not wait for the database (the service's choice). Reads and clicks wait for the queue first,
    so a click on a result just shown always finds it; a full queue (`max_pending`) is written inline,
    which keeps memory bounded; `close()` writes what is queued. A process killed outright loses the
    rows still queued (milliseconds' worth), as SQLite's synchronous=NORMAL loses its last commits."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        spool: Path | None = None,
        busy_timeout_s: float = 10.0,
        background: bool = False,
        max_pending: int = 10_000,
    ):
        if url.startswith("sqlite:///"):
            database = Path(url.removeprefix("sqlite:///"))
            database.parent.mkdir(parents=True, exist_ok=True)
            spool = spool or database.with_name(database.name + ".spool.jsonl")
        # one connection per request thread that logs at once; SQLite waits on a lock, not fails
        in_memory = url in ("sqlite://", "sqlite:///:memory:")
        options = {} if in_memory else {"pool_size": pool_size, "max_overflow": pool_size}
        self.engine = sa.create_engine(url, connect_args=_connect_args(url, busy_timeout_s), **options)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_write_ahead)
        metadata.create_all(self.engine)
        self.spool = spool
        self._spool_lock = threading.Lock()
        self._pending: queue.Queue | None = queue.Queue(max_pending) if background else None
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    def log_query(self, results: Sequence[tuple[str, float]], **recorded: Any) -> str:
        """Record a query and the ranked (image id, score) results it showed (the fields of
        `query_bundle`); returns its query id."""
        query_id, bundle = query_bundle(results, **recorded)
        self._submit(bundle)
        return query_id

    def log_shadow(
        self,
        query_id: str,
        *,
        challenger_version: str,
        champion_ms: float,
        challenger_ms: float,
        overlap: float,
    ) -> None:
        """Record the challenger's unseen answer to a shown query: its latency and top-k overlap."""
        row = {
            "query_id": query_id,
            "challenger_version": challenger_version,
            "champion_ms": champion_ms,
            "challenger_ms": challenger_ms,
            "overlap_at_k": overlap,
        }
        self._submit({"shadow_runs": [row]})

    def _submit(self, bundle: Bundle) -> None:
        if self._pending is not None:
            self._start_writer()
            with contextlib.suppress(queue.Full):
                self._pending.put_nowait(bundle)
                return
        self._write_or_spool([bundle])

    def _write_or_spool(self, bundles: list[Bundle]) -> None:
        try:
            self._write_with_retries(bundles)
        except sa.exc.SQLAlchemyError:
            if self.spool is None:
                raise
            for bundle in bundles:
                self._append_to_spool(bundle)
            return
        self.replay_spool()

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name="click-log-writer", daemon=True)
                self._writer.start()

    def _drain(self) -> None:
        """The writer thread: whatever is queued, in one transaction per batch, until close()."""
        stop = False
        while not stop:
            batch = [self._pending.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 500:
                    batch.append(self._pending.get_nowait())
            rows = [row for row in batch if row is not None]
            stop = len(rows) < len(batch)  # close() queued its marker
            if rows:
                with contextlib.suppress(sa.exc.SQLAlchemyError):  # no spool configured: dropped
                    self._write_or_spool(rows)
            for _ in batch:
                self._pending.task_done()

    def warm_up(self) -> None:
        """Write one query's rows of each kind in a transaction that is rolled back, and start the
        writer: the pool's first connection and each insert's compiled form are made now, not on the
        first user's query (whose write took ~2.4 ms instead of ~0.3 ms, on the writer thread but
        holding the interpreter while that query's answer was still being built). A database that
        cannot be reached now is no error: queries are spooled until it can."""
        experiment = {"kind": "plain", "challenger_version": None, "swap_rank": None, "swapped": None}
        _, bundle = query_bundle(
            [("warm-up", 0.0)], model_version="warm-up", experiment=experiment, teams=["warm-up"]
        )
        with (
            contextlib.suppress(sa.exc.SQLAlchemyError),
            self.engine.connect() as connection,
            connection.begin() as transaction,
        ):
            _insert(connection, [bundle])
            transaction.rollback()
        if self._pending is not None:
            self._start_writer()

    def flush(self) -> None:
        """Wait until every queued query is written (or spooled)."""
        if self._pending is not None and self._writer is not None:
            self._pending.join()

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._pending is not None and self._writer is not None:
            self._pending.put(None)
            self._writer.join()
            self._writer = None

    def _write_with_retries(self, bundles: list[Bundle]) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self.engine.begin() as connection:
                    _insert(connection, bundles)
                return
            except sa.exc.OperationalError:  # locked / busy: back off and try again
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)

    def _append_to_spool(self, bundle: Bundle) -> None:
        with self._spool_lock, self.spool.open("a") as handle:
            handle.write(json.dumps(bundle) + "\n")
            handle.flush()

    def replay_spool(self) -> int:
        """Write the spooled queries into the database (all in one transaction); how many were."""
        if self.spool is None or not self.spool.exists():
            return 0
        with self._spool_lock:
            if not self.spool.exists():
                return 0
            spooled = self.spool.read_text().splitlines()
            lines = [spooled_bundle(json.loads(line)) for line in spooled if line.strip()]
            try:
                self._write_with_retries(lines)
            except sa.exc.IntegrityError:  # some were written after all: add the others one by one
                for bundle in lines:
                    with contextlib.suppress(sa.exc.IntegrityError):
                        self._write_with_retries([bundle])
            except sa.exc.SQLAlchemyError:
                return 0  # still failing: the spool stays for the next write
            self.spool.unlink()
        return len(lines)

    def log_click(self, query_id: str, rank: int, *, at: datetime | None = None) -> str:
        """Record a click on the result shown at `rank` for `query_id`; returns the clicked image id."""
        self.flush()
        with self.engine.begin() as connection:
            shown = connection.execute(
                sa.select(impressions_table.c.image_id).where(
                    impressions_table.c.query_id == query_id, impressions_table.c.rank == rank
                )
            ).scalar_one_or_none()
            if shown is None:
                raise UnknownQuery(f"query {query_id} showed no result at rank {rank}")
            connection.execute(
                clicks_table.insert().values(
                    query_id=query_id, rank=rank, image_id=shown, clicked_at=at or datetime.now(UTC)
                )
            )
        return shown

    def read(self, *, include_simulated: bool = True) -> LogTables:
        self.flush()
        with self.engine.connect() as connection:
            frames = {name: pd.read_sql(sa.select(table), connection) for name, table in FRAMES.items()}
        tables = LogTables(**frames)
        if include_simulated:
            return tables
        queries = tables.queries
        return tables.only(set(queries.loc[~queries["simulated"].astype(bool), "query_id"]))

    def latest_texts(self, limit: int) -> list[str]:
        """The text of the latest `limit` text queries, newest first."""
        self.flush()
        statement = (
            sa.select(queries_table.c.query_text)
            .where(queries_table.c.query_text.is_not(None))
            .order_by(queries_table.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [row[0] for row in connection.execute(statement)]

    def count_queries(self, *, simulated: bool | None = None) -> int:
        statement = sa.select(sa.func.count()).select_from(queries_table)
        if simulated is not None:
            statement = statement.where(queries_table.c.simulated == simulated)
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())


def _insert(connection: sa.Connection, bundles: list[Bundle]) -> None:
    for bundle in bundles:
        for name, table in TABLES.items():
            rows = bundle.get(name)
            if rows:
                connection.execute(table.insert(), [typed_row(name, row) for row in rows])
