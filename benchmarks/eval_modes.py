"""Vector vs keyword vs hybrid ranking on every held-out set of the workspace (the choice of the
service's default `mode`): nDCG@10 and recall@10 per query origin, in and out of domain.

Uses the workspace's evaluation sets (asset eval_sets) and a registered model (default: the champion).

    .venv/bin/python benchmarks/eval_modes.py [--model champion]
"""

from __future__ import annotations

import argparse

import pandas as pd

from imagesearch.evaluation.sets import EvalSets
from imagesearch.evaluation.step import evaluate_everywhere, read_outside_sets
from imagesearch.models.registry import load_encoder, pin_reference
from imagesearch.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="champion")
    args = parser.parse_args()
    settings = Settings()
    model = pin_reference(args.model, settings)
    sets, outside = EvalSets.read(settings.evaluation_dir), read_outside_sets(settings)
    _, results = evaluate_everywhere(load_encoder(model, settings), sets, outside, modes=True)
    rows = [
        {
            "mode": key.removeprefix("mode:"),
            "query_type": query_type,
            "n": int(metrics["queries"]),
            "ndcg_at_10": metrics["ndcg_at_10"],
            "recall_at_10": metrics["recall_at_10"],
        }
        for key, by_type in results.items()
        if key.startswith("mode:")
        for query_type, metrics in by_type.items()
        if "text_to_image/" in query_type
    ]
    table = pd.DataFrame(rows).pivot_table(
        index=["query_type", "n"], columns="mode", values=["ndcg_at_10", "recall_at_10"]
    )
    print(f"model {model}")
    print(table.round(3).to_markdown())


if __name__ == "__main__":
    main()
