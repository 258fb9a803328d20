"""The click log's tables and rows, without a database connection: the schema, the rows one query
writes (a bundle) and the frames a reader gets back (`LogTables`). `clicklog.ClickLog` writes and reads
them in a real SQL database (SQLite by default, any SQLAlchemy URL).

Schema (one row per query shown, per result shown, per click):

    queries      query_id, created_at, query_text | query_image_hash, model_version, simulated
    impressions  query_id, rank (1-based), image_id, score
    clicks       query_id, rank, image_id, clicked_at

and, for the queries in an online experiment (serving/experiments.py):

    experiment_queries  query_id, kind (interleaving | shadow | swap), challenger_version,
                        swap_rank, swapped (swap: the pair (k, k+1) drawn, and whether it was swapped)
    interleaved_teams   query_id, rank, team (champion | challenger): who contributed each result
    shadow_runs         query_id, challenger_version, champion_ms, challenger_ms, overlap_at_k

The click simulator writes the same tables with ``simulated = true`` so simulated traffic never
passes for real traffic.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

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
# LogTables' fields, by the table each is read from
FRAMES = {
    "queries": queries_table,
    "impressions": impressions_table,
    "clicks": clicks_table,
    "experiments": experiment_queries_table,
    "teams": interleaved_teams_table,
    "shadow": shadow_runs_table,
}

SIMULATED_HEADER = "x-imagesearch-simulated"  # "1" on a request: a simulated user's query


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


def typed_row(table: str, row: dict) -> dict:
    """A row as the table takes it (a bundle travels through JSON for the spool: times as text)."""
    if table == "queries" and isinstance(row["created_at"], str):
        return {**row, "created_at": datetime.fromisoformat(row["created_at"])}
    return row


def spooled_bundle(spooled: dict) -> Bundle:
    """A spooled line as a bundle; lines spooled before bundles held one query and its impressions."""
    if "query" in spooled:
        return {"queries": [spooled["query"]], "impressions": spooled["impressions"]}
    return spooled
