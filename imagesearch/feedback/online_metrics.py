"""Online metrics from the impression/click log, per model version and day (pure pandas).

Per group: queries; ctr_at_k (share of queries with a click in the top k); mrr (mean over queries of
1 / rank of the first click, 0 without a click); abandonment (share of queries without any click);
clicks_per_query. Simulated traffic is reported in its own rows, never mixed with real traffic."""

from __future__ import annotations

import pandas as pd

from imagesearch.feedback.log_schema import LogTables

GROUP = ["model_version", "day", "simulated"]


COLUMNS = [*GROUP, "queries", "ctr_at_k", "mrr", "abandonment", "clicks_per_query"]


def online_metrics(tables: LogTables, *, k: int = 10) -> pd.DataFrame:
    if tables.queries.empty:
        return pd.DataFrame(columns=COLUMNS)
    queries = tables.queries.assign(
        day=pd.to_datetime(tables.queries["created_at"], utc=True).dt.strftime("%Y-%m-%d"),
        simulated=tables.queries["simulated"].astype(bool),
    )[["query_id", *GROUP]]
    clicks = tables.clicks.groupby("query_id")["rank"].agg(first_click="min", clicks="count")
    in_top = tables.clicks[tables.clicks["rank"] <= k].groupby("query_id").size().rename("clicks_in_top")
    per_query = queries.join(clicks, on="query_id").join(in_top, on="query_id")
    per_query = per_query.fillna({"clicks": 0, "clicks_in_top": 0})
    per_query["reciprocal_rank"] = (1.0 / per_query["first_click"]).fillna(0.0)
    summary = per_query.groupby(GROUP, as_index=False).agg(
        queries=("query_id", "count"),
        ctr_at_k=("clicks_in_top", lambda c: float((c > 0).mean())),
        mrr=("reciprocal_rank", "mean"),
        abandonment=("clicks", lambda c: float((c == 0).mean())),
        clicks_per_query=("clicks", "mean"),
    )
    return summary[COLUMNS].sort_values(GROUP).reset_index(drop=True)
