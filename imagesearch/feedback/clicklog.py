"""The impression/click log: a real SQL database (SQLite by default, any SQLAlchemy URL).

Schema (one row per query shown, per result shown, per click):

    queries      query_id, created_at, query_text | query_image_hash, model_version, simulated
    impressions  query_id, rank (1-based), image_id, score
    clicks       query_id, rank, image_id, clicked_at

and, for the queries in an online experiment (serving/experiments.py):

    experiment_queries  query_id, kind (interleaving | shadow | swap), challenger_version,
                        swap_rank, swapped (swap: the pair (k, k+1) drawn, and whether it was swapped)
    interleaved_teams   query_id, rank, team (champion | challenger): who contributed each result
    shadow_runs         query_id, challenger_version, champion_ms, challenger_ms, overlap_at_k

The search service writes it; `click_pairs` and online metrics read it. The click simulator writes
the same tables with ``simulated = true`` so simulated traffic never passes for real traffic.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

metadata = sa.MetaData()
queries_table = sa.Table(
    "queries",
    metadata,
    sa.Column("query_id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("query_text", sa.Text, nullable=True),
    sa.Column("query_image_hash", sa.String(64), nullable=True),
    sa.Column("model_version", sa.String(200), nullable=False, index=True),
    sa.Column("simulated", sa.Boolean, nullable=False, default=False),
)
impressions_table = sa.Table(
    "impressions",
    metadata,
    sa.Column("query_id", sa.String(32), sa.ForeignKey("queries.query_id"), primary_key=True),
    sa.Column("rank", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
)
clicks_table = sa.Table(
    "clicks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("query_id", sa.String(32), sa.ForeignKey("queries.query_id"), nullable=False, index=True),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=False),
)
experiment_queries_table = sa.Table(
    "experiment_queries",
    metadata,
    sa.Column("query_id", sa.String(32), sa.ForeignKey("queries.query_id"), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False, index=True),
    sa.Column("challenger_version", sa.String(200), nullable=True, index=True),
    sa.Column("swap_rank", sa.Integer, nullable=True),
    sa.Column("swapped", sa.Boolean, nullable=True),
)
interleaved_teams_table = sa.Table(
    "interleaved_teams",
    metadata,
    sa.Column("query_id", sa.String(32), sa.ForeignKey("queries.query_id"), primary_key=True),
    sa.Column("rank", sa.Integer, primary_key=True),
    sa.Column("team", sa.String(16), nullable=False),
)
shadow_runs_table = sa.Table(
    "shadow_runs",
    metadata,
    sa.Column("query_id", sa.String(32), sa.ForeignKey("queries.query_id"), primary_key=True),
    sa.Column("challenger_version", sa.String(200), nullable=False),
    sa.Column("champion_ms", sa.Float, nullable=False),
    sa.Column("challenger_ms", sa.Float, nullable=False),
    sa.Column("overlap_at_k", sa.Float, nullable=False),
)
# a bundle is the rows one event writes, by table, inserted in this order (a query before its rows)
TABLES = {
    table.name: table
    for table in (
        queries_table,
        impressions_table,
        experiment_queries_table,
        interleaved_teams_table,
        shadow_runs_table,
    )
}
Bundle = dict[str, list[dict]]


SIMULATED_HEADER = "x-imagesearch-simulated"  # "1" on a request: a simulated user's query


class UnknownQuery(LookupError):
    """A click names a query id the log has never shown, or a rank it did not show."""


@dataclass(frozen=True, slots=True)
class LogTables:
    queries: pd.DataFrame
    impressions: pd.DataFrame
    clicks: pd.DataFrame
    experiments: pd.DataFrame | None = None  # experiment_queries
    teams: pd.DataFrame | None = None  # interleaved_teams
    shadow: pd.DataFrame | None = None  # shadow_runs

    def only(self, query_ids) -> LogTables:
        """The rows of these queries, in every table."""
        return LogTables(
            **{
                name: frame[frame["query_id"].isin(query_ids)]
                for name in self.__slots__
                if (frame := getattr(self, name)) is not None
            }
        )


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
            lines = [
                _bundle(json.loads(line)) for line in self.spool.read_text().splitlines() if line.strip()
            ]
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
        tables = {
            "queries": queries_table,
            "impressions": impressions_table,
            "clicks": clicks_table,
            "experiments": experiment_queries_table,
            "teams": interleaved_teams_table,
            "shadow": shadow_runs_table,
        }
        with self.engine.connect() as connection:
            frames = {name: pd.read_sql(sa.select(table), connection) for name, table in tables.items()}
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


def query_bundle(
    results: Sequence[tuple[str, float]],
    *,
    model_version: str,
    query_text: str | None = None,
    query_image_hash: str | None = None,
    simulated: bool = False,
    at: datetime | None = None,
    experiment: dict | None = None,
    teams: Sequence[str] | None = None,
) -> tuple[str, Bundle]:
    """A new query id and the rows that record a query and the ranked (image id, score) results it
    showed. `experiment`: its experiment_queries row (kind, challenger_version, swap_rank, swapped);
    `teams`: who contributed each shown result, in rank order (interleaving)."""
    query_id = uuid.uuid4().hex
    query = {
        "query_id": query_id,
        "created_at": (at or datetime.now(UTC)).isoformat(),
        "query_text": query_text,
        "query_image_hash": query_image_hash,
        "model_version": model_version,
        "simulated": simulated,
    }
    bundle: Bundle = {
        "queries": [query],
        "impressions": [
            {"query_id": query_id, "rank": rank, "image_id": image_id, "score": float(score)}
            for rank, (image_id, score) in enumerate(results, start=1)
        ],
    }
    if experiment is not None:
        bundle["experiment_queries"] = [{"query_id": query_id, **experiment}]
    if teams is not None:
        bundle["interleaved_teams"] = [
            {"query_id": query_id, "rank": rank, "team": team} for rank, team in enumerate(teams, start=1)
        ]
    return query_id, bundle


def _insert(connection: sa.Connection, bundles: list[Bundle]) -> None:
    for bundle in bundles:
        for name, table in TABLES.items():
            rows = bundle.get(name)
            if rows:
                connection.execute(table.insert(), [_typed(name, row) for row in rows])


def _typed(table: str, row: dict) -> dict:
    """A row as the table takes it (a bundle travels through JSON for the spool: times as text)."""
    if table == "queries" and isinstance(row["created_at"], str):
        return {**row, "created_at": datetime.fromisoformat(row["created_at"])}
    return row


def _bundle(spooled: dict) -> Bundle:
    """A spooled line as a bundle; lines spooled before bundles held one query and its impressions."""
    if "query" in spooled:
        return {"queries": [spooled["query"]], "impressions": spooled["impressions"]}
    return spooled
