"""The demo's online experiment split by query origin: abandonment of the pages each guardrail arm
compares (interleaved pages; the champion's own pages since the experiment began, as
`experiment_arms` selects them), and, for title lookups, where the known item was shown.

Reads the workspace's click log and judges its queries with `whole_catalog_text_qrels`, as the
simulated users did.

    make demo   # then:
    .venv/bin/python benchmarks/online_by_origin.py
"""

from __future__ import annotations

import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.evaluation.sets import EvalSets, whole_catalog_text_qrels
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.online_experiment import experiment_arms
from imagesearch.settings import Settings


def main() -> None:
    settings = Settings()
    clicks = ClickLog(settings.effective_click_log_url)
    tables = clicks.read()
    clicks.close()
    challenger = tables.experiments["challenger_version"].dropna().iloc[-1]
    arms = experiment_arms(tables, challenger)
    arm_of = pd.concat([pd.Series(arm, index=ids.to_numpy()) for arm, ids in arms.items()])
    qrels = whole_catalog_text_qrels(
        EvalSets.read(settings.evaluation_dir).text_qrels, read_catalog(settings.catalog_path)
    )
    pages = tables.queries[tables.queries["query_id"].isin(arm_of.index)].copy()
    pages["arm"] = pages["query_id"].map(arm_of)
    pages["origin"] = pages["query_text"].map(qrels.drop_duplicates("query").set_index("query")["origin"])
    pages["abandoned"] = ~pages["query_id"].isin(set(tables.clicks["query_id"]))
    print(f"challenger {challenger}")
    by_origin = pages.groupby(["origin", "arm"])
    print(by_origin.agg(pages=("query_id", "size"), abandonment=("abandoned", "mean")).round(3))

    titles = qrels[qrels["origin"] == "title"]
    relevant = set(zip(titles["query"], titles["image_id"], strict=True))
    lookups = pages[pages["origin"] == "title"]
    shown = tables.impressions.merge(lookups[["query_id", "query_text"]], on="query_id")
    hits = shown[[(q, i) in relevant for q, i in zip(shown["query_text"], shown["image_id"], strict=True)]]
    lookups = lookups.assign(first=lookups["query_id"].map(hits.groupby("query_id")["rank"].min()))
    for arm, group in lookups.groupby("arm"):
        print(
            f"{arm}: known item first on {(group['first'] == 1).mean():.0%} of {len(group)} title "
            f"pages, in the top two on {(group['first'] <= 2).mean():.0%}"
        )


if __name__ == "__main__":
    main()
