"""The demo's online experiment split by query origin: abandonment of interleaved pages against the
champion's own (plain and shadowed) pages, and, for title lookups, where the known item was shown.

Reads the workspace's click log (simulated queries from the experiment's first one on) and judges
them with `whole_catalog_text_qrels`, as the simulated users did.

    make demo   # then:
    .venv/bin/python benchmarks/online_by_origin.py
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from imagesearch.catalog.build import read_catalog
from imagesearch.evaluation.sets import EvalSets, whole_catalog_text_qrels
from imagesearch.settings import Settings

ARM = {"interleaving": "interleaved", "plain": "champion", "shadow": "champion"}


def experiment_pages(engine: sa.Engine) -> pd.DataFrame:
    """One row per simulated page since the experiment began: its text, arm and clicks."""
    pages = pd.read_sql(
        "SELECT q.query_id, q.query_text, q.created_at, COALESCE(e.kind, 'plain') AS kind, "
        "(SELECT COUNT(*) FROM clicks c WHERE c.query_id = q.query_id) AS clicks "
        "FROM queries q LEFT JOIN experiment_queries e ON e.query_id = q.query_id WHERE q.simulated",
        engine,
    )
    began = pages.loc[pages["kind"] != "plain", "created_at"].min()
    pages = pages[pages["created_at"] >= began].assign(arm=lambda p: p["kind"].map(ARM))
    return pages.dropna(subset=["arm"])


def main() -> None:
    settings = Settings()
    engine = sa.create_engine(settings.effective_click_log_url)
    qrels = whole_catalog_text_qrels(
        EvalSets.read(settings.evaluation_dir).text_qrels, read_catalog(settings.catalog_path)
    )
    pages = experiment_pages(engine)
    pages["origin"] = pages["query_text"].map(qrels.drop_duplicates("query").set_index("query")["origin"])
    pages["abandoned"] = pages["clicks"] == 0
    by_origin = pages.groupby(["origin", "arm"])
    print(by_origin.agg(pages=("query_id", "size"), abandonment=("abandoned", "mean")).round(3))

    titles = qrels[qrels["origin"] == "title"]
    relevant = set(zip(titles["query"], titles["image_id"], strict=True))
    lookups = pages[pages["origin"] == "title"]
    shown = pd.read_sql("SELECT query_id, rank, image_id FROM impressions", engine)
    shown = shown.merge(lookups[["query_id", "query_text"]], on="query_id")
    hits = shown[[(q, i) in relevant for q, i in zip(shown["query_text"], shown["image_id"], strict=True)]]
    lookups = lookups.assign(first=lookups["query_id"].map(hits.groupby("query_id")["rank"].min()))
    for arm, group in lookups.groupby("arm"):
        print(
            f"{arm}: known item first on {(group['first'] == 1).mean():.0%} of {len(group)} title "
            f"pages, in the top two on {(group['first'] <= 2).mean():.0%}"
        )


if __name__ == "__main__":
    main()
