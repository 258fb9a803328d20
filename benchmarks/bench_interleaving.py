"""Queries to a decision: team-draft interleaving against an A/B test on click-through rate, on the
same simulated users (SIMULATED: they click by held-out relevance grades, examining rank r with
probability (1/r)**eta and clicking an examined relevant one with probability 2/3, anything else
with 0.02), comparing two real rankers of the workspace: hybrid against vector ranking
(the champion's, on the test split's tag queries, where offline nDCG@10 says hybrid is better).

For each query count, `--trials` simulated experiments each sample that many queries; an experiment
decides when its test is significant (p < 0.05) for the better ranker. Reported: the power at each
count, and the smallest count reaching 0.8 for each method.

    .venv/bin/python benchmarks/bench_interleaving.py [--trials 100] [--eta 1.0] [--counts 100 200 400]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagesearch.evaluation.modes import HYBRID, VECTOR, file_name_titles, mode_rankings
from imagesearch.evaluation.ranking import rank_corpus
from imagesearch.evaluation.sets import EvalSets
from imagesearch.feedback.experiments import power_ladder, queries_needed
from imagesearch.feedback.simulation import SimulatedQuery
from imagesearch.models.registry import load_encoder, pin_reference
from imagesearch.settings import Settings

COUNTS = [25, 50, 100, 200, 400, 800, 1600, 3200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--model", default="champion")
    parser.add_argument("--counts", type=int, nargs="+", default=COUNTS, help="query counts to try")
    args = parser.parse_args()
    settings = Settings()
    model = pin_reference(args.model, settings)
    encoder = load_encoder(model, settings)
    sets = EvalSets.read(settings.evaluation_dir)
    tags = sets.text_qrels[sets.text_qrels["origin"] == "tag"]
    sets.text_qrels = tags
    vectors = encoder.encode_images([Path(p) for p in sets.corpus["path"]])
    rankings = mode_rankings(sets, rank_corpus(sets, vectors, encoder.encode_texts), file_name_titles(sets))
    queries = [
        SimulatedQuery(text, dict(zip(group["image_id"], group["grade"] * 2, strict=True)))
        for text, group in tags.groupby("query")
    ]
    rows = power_ladder(
        queries, rankings[HYBRID], rankings[VECTOR], counts=args.counts, trials=args.trials, eta=args.eta
    )
    print(f"SIMULATED users, model {model}, {len(queries)} tag queries, eta {args.eta}, {args.trials} trials")
    print("| queries | interleaving power | A/B (CTR) power |\n|---|---|---|")
    for row in rows:
        print(f"| {row.queries} | {row.interleaving_power:.2f} | {row.ab_power:.2f} |")
    print(json.dumps({"queries_to_80%_power": queries_needed(rows)}))


if __name__ == "__main__":
    main()
