"""In-domain text->image nDCG@10 with the title queries as round one measured them (author tokens
kept: "apple bitten dan gerhard") and as the gate measures them now (trailing author tokens dropped),
for each model named (after `make demo`; tags and titles only, no held-out judgments). A model named
`ablation:VARIANT` is that recipe as `make ablation` trained it: run with the same IMAGESEARCH_ABLATION__*
settings, it resumes the finished run from its checkpoint instead of training again.

    .venv/bin/python benchmarks/eval_author_titles.py [champion v0 "ablation:RECIPE" ...]
"""

from __future__ import annotations

import argparse

from imagesearch.catalog.build import read_catalog
from imagesearch.embeddings.backbone_cache import cache_folder
from imagesearch.evaluation.ablation import ablation_budget, train_variant
from imagesearch.evaluation.sets import build_eval_sets
from imagesearch.evaluation.step import evaluate_everywhere
from imagesearch.models.encoders import Encoder
from imagesearch.models.registry import load_encoder
from imagesearch.settings import Settings

ABLATION = "ablation:"


def _encoder(reference: str, settings: Settings) -> Encoder:
    if reference.startswith(ABLATION):
        return train_variant(settings, reference.removeprefix(ABLATION), ablation_budget(settings))[0]
    return load_encoder(reference, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["champion", "v0"])
    args = parser.parse_args()
    settings = Settings()
    catalog = read_catalog(settings.catalog_path)
    both = {drop: build_eval_sets(catalog, drop_authors=drop) for drop in (True, False)}
    for reference in args.models:
        encoder = _encoder(reference, settings)
        for drop_authors, sets in both.items():
            _, results = evaluate_everywhere(encoder, sets, {}, features=cache_folder(settings))
            found = {
                k: round(v["ndcg_at_10"], 4) for k, v in results.items() if k.startswith("text_to_image")
            }
            print(f"authors {'dropped' if drop_authors else 'kept   '}  {reference:10s} {found}")


if __name__ == "__main__":
    main()
