"""What routing the specialist block by collection, not by image, would give.

The `anchored + domain-gated specialist` recipe is trained at the ablation's budget (resumed from
`make ablation`'s work folder when that ran with the same settings). Then, on held-out rows:

1. each collection's median domain similarity (the gate's measure) against the in-domain val images'
   quantiles: the rule a router deciding once per collection would apply;
2. nDCG@10 of the test rows with the block open on every image of the in-domain test split and shut
   on every image of each outside collection (what such a router gives when it decides right), and,
   for contrast, open on the outside collections too, at each weight of the block.

After `make demo`, at the demo's training budget:

    IMAGESEARCH_ABLATION__MAX_TRAIN_IMAGES=100000 IMAGESEARCH_ABLATION__FROZEN_EPOCHS=10 \\
        .venv/bin/python benchmarks/eval_specialist_routing.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imagesearch.catalog.build import read_catalog
from imagesearch.embeddings.backbone_cache import cache_folder, file_features
from imagesearch.evaluation.ablation import ablation_budget, train_variant
from imagesearch.evaluation.sets import (
    IMAGE_TO_IMAGE,
    TEXT_TO_IMAGE,
    EvalSets,
    build_eval_sets,
    outside_split,
)
from imagesearch.evaluation.step import evaluate_encoder, read_outside_sets
from imagesearch.models.encoders import Encoder
from imagesearch.models.towers import set_specialist_weight
from imagesearch.settings import Settings

RECIPE = "anchored + domain-gated specialist"
OPEN, SHUT = -2.0, 2.0  # gate thresholds below / above any cosine
QUANTILES = (0.1, 0.3, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    args = parser.parse_args()
    settings = Settings()
    encoder, trained = train_variant(settings, RECIPE, ablation_budget(settings), progress=True)
    print(f"kept on validation (block routed by image): epoch {trained.final.get('epoch')}")
    # routed by collection, an outside collection ranks by the anchor whatever the block learned, so
    # selection would keep the epoch best in domain: the block's val recall rises to the last epochs
    epoch = load_last_epoch(encoder, trained.checkpoint)
    print(f"evaluated: epoch {epoch}, interpolation {trained.final.get('interpolation', 0.0)}")
    test, outside = EvalSets.read(settings.evaluation_dir), read_outside_sets(settings)
    print_router_table(settings, encoder, test, outside)
    features = cache_folder(settings)
    # round one's in-domain numbers were measured with author tokens left in the title queries
    with_authors = build_eval_sets(read_catalog(settings.catalog_path), drop_authors=False)
    rows = [routed_row(encoder, weight, test, outside, features) for weight in args.weights]
    for row in rows:
        set_specialist_weight(encoder.image_model, row["weight"])
        set_specialist_weight(encoder.text_model, row["weight"])
        encoder.image_model.projection.specialist.gate.threshold.fill_(OPEN)
        results = evaluate_encoder(encoder, with_authors, features)[1]
        row["in-domain t2i, authors kept"] = results[TEXT_TO_IMAGE]["ndcg_at_10"]
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))


def load_last_epoch(encoder: Encoder, checkpoint: Path) -> int:
    """The heads as the last epoch left them (the raw block stays as validation chose it)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    heads = {
        "image_projection.": encoder.image_model.projection,
        "text_projection.": encoder.text_model.head(),
    }
    for prefix, module in heads.items():
        module.load_state_dict(
            {k.removeprefix(prefix): v for k, v in state["parts"].items() if k.startswith(prefix)}
        )
    return int(state["epoch"])


def print_router_table(settings: Settings, encoder: Encoder, test: EvalSets, outside: dict) -> None:
    """Each collection's median similarity to the training views, against the in-domain val quantiles."""
    catalog = read_catalog(settings.catalog_path)
    val_paths = catalog.loc[catalog["split"] == "val", "path"].tolist()
    collections = {"in-domain val": val_paths, "in-domain test": test.corpus["path"].tolist()}
    for name, sets in outside_split(settings, "val").items():
        collections[f"{name} val"] = sets.corpus["path"].tolist()
    for name, sets in outside.items():
        collections[f"{name} test"] = sets.corpus["path"].tolist()
    similarity = {name: domain_similarity(settings, encoder, paths) for name, paths in collections.items()}
    thresholds = {q: float(np.quantile(similarity["in-domain val"], q)) for q in QUANTILES}
    rows = []
    for name, values in similarity.items():
        median = float(np.median(values))
        row = {"collection": name, "images": len(values), "median similarity": median}
        for q, threshold in thresholds.items():
            decision = "inside" if median >= threshold else "outside"
            row[f"q {q} ({threshold:.3f})"] = f"{decision}, {np.mean(values >= threshold):.0%} of images"
        rows.append(row)
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))


def domain_similarity(settings: Settings, encoder: Encoder, paths: list[str]) -> np.ndarray:
    features = torch.from_numpy(file_features(encoder, paths, cache_folder(settings))).float()
    with torch.inference_mode():
        return encoder.image_model.projection.specialist.gate.similarity(features).numpy()


def routed_row(
    encoder: Encoder, weight: float, test: EvalSets, outside: dict, features: Path
) -> dict[str, float]:
    """nDCG@10 at one block weight: the in-domain test split with the gate open on every image, each
    outside collection with it shut on every image (routed) and open on every image (not routed)."""
    set_specialist_weight(encoder.image_model, weight)
    set_specialist_weight(encoder.text_model, weight)
    gate = encoder.image_model.projection.specialist.gate
    gate.threshold.fill_(OPEN)
    row = {"weight": weight, **headline("in-domain", evaluate_encoder(encoder, test, features)[1])}
    for name, sets in outside.items():
        row |= headline(f"{name} open", evaluate_encoder(encoder, sets, features)[1])
    gate.threshold.fill_(SHUT)
    for name, sets in outside.items():
        row |= headline(f"{name} routed", evaluate_encoder(encoder, sets, features)[1])
    return row


def headline(prefix: str, results: dict[str, dict[str, float]]) -> dict[str, float]:
    short = {IMAGE_TO_IMAGE: "i2i", TEXT_TO_IMAGE: "t2i"}
    return {f"{prefix} {name}": results[kind]["ndcg_at_10"] for kind, name in short.items()}


if __name__ == "__main__":
    main()
