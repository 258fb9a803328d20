"""What helps on held-out data, in-domain and out of domain: training recipes and training-data sources.

A variant is a recipe (`RECIPES`: head, raw-feature block, model selection; trained on every source) or
a source name (the default recipe on that source only), or ``all``. Every variant trains with the same
reduced budget (settings.ablation) and is evaluated exactly like a challenger: on the test split and on
each out-of-domain collection. v0 and raw pretrained features are evaluated in the same run. Each
variant is a nested MLflow run under one `ablation` run, which also holds the comparison table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.common.images import decode_limits
from imagesearch.common.io import write_parquet_atomic
from imagesearch.common.progress import Progress
from imagesearch.embeddings.backbone_cache import cache_folder
from imagesearch.evaluation.ranking import metrics_table
from imagesearch.evaluation.sets import EvalSets, outside_manifests, outside_split
from imagesearch.evaluation.step import evaluate_everywhere, pretrained_results, read_outside_sets
from imagesearch.models import registry
from imagesearch.models.builders import build_trained_encoder, build_zeroshot_encoder
from imagesearch.models.encoders import Encoder
from imagesearch.settings import TRAINING_SOURCES, ModelSettings, Settings, TrainingSettings
from imagesearch.training.loop import TrainResult, fingerprint, train_towers
from imagesearch.training.step import model_for_training
from imagesearch.training_data.examples import leakage_problems, mix_examples
from imagesearch.training_data.step import held_out_queries

ALL = "all"
HEADLINE = ["image_to_image", "text_to_image", "text_to_image/title", "text_to_image/tag"]
OUTSIDE_HEADLINE = ["image_to_image", "text_to_image"]
# the recipes measured before the routed specialist became the default: no block, the fine-tuned
# residual interpolated on this grid, the raw block's weight chosen from this one
NO_BLOCK = {"specialist_dim": 0}
RAW_WEIGHTS_BEFORE = {"raw_weight_grid": [1.0, 2.0, 3.0, 4.0, 6.0]}
FINE_TUNED_GRID = {"interpolation_grid": [0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0], **RAW_WEIGHTS_BEFORE}
# recipe -> (model settings, training settings) overrides; each trains on every enabled source
RECIPES: dict[str, tuple[dict, dict]] = {
    "two_tower (round one)": ({"head": "two_tower", "raw_feature_weight": 0.0}, {"selection": "last"}),
    "two_tower + raw features": ({"head": "two_tower", "raw_feature_weight": 1.0}, RAW_WEIGHTS_BEFORE),
    "anchored, no raw features": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 0.0},
        FINE_TUNED_GRID,
    ),
    "anchored, last epoch, full residual": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {"selection": "last", "interpolation_grid": [1.0], **RAW_WEIGHTS_BEFORE},
    ),
    "anchored, v0's bridge (top 10, T 1)": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {**FINE_TUNED_GRID, "bridge_top_k_grid": [], "bridge_temperature_grid": []},
    ),
    "anchored, bridge chosen, no training": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {"frozen_epochs": 0, "unfrozen_epochs": 0, **RAW_WEIGHTS_BEFORE},
    ),
    "anchored, text tower locked (LiT)": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0, "text_residual": False},
        FINE_TUNED_GRID,
    ),
    "anchored, plain raw block": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {**FINE_TUNED_GRID, "raw_transform_grid": ["plain"]},
    ),
    "anchored, residual over the class mix": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0, "image_residual": "classes"},
        FINE_TUNED_GRID,
    ),
    "anchored, zero-shot distillation (ZSCL)": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {**FINE_TUNED_GRID, "distillation_weight": 1.0},
    ),
    "anchored, finer interpolation grid": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {"interpolation_grid": [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0], **RAW_WEIGHTS_BEFORE},
    ),
    "anchored, residual decay 1 (L2-SP)": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {**FINE_TUNED_GRID, "residual_weight_decay": 1.0},
    ),
    "anchored, residual decay 5 (L2-SP)": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {**FINE_TUNED_GRID, "residual_weight_decay": 5.0},
    ),
    "anchored, learning rate 2e-3 (the default before)": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        {**FINE_TUNED_GRID, "learning_rate": 2e-3},
    ),
    "anchored + classifier residual": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0, "classifier_residual": True},
        FINE_TUNED_GRID,
    ),
    "anchored, fine-tuned residual (the default before)": (
        {**NO_BLOCK, "head": "anchored", "raw_feature_weight": 1.0},
        FINE_TUNED_GRID,
    ),
    "anchored + domain-gated specialist": (
        {"head": "anchored", "raw_feature_weight": 1.0, "specialist_routing": "image"},
        RAW_WEIGHTS_BEFORE,
    ),
    "anchored + collection-routed specialist (default)": (
        {"head": "anchored", "raw_feature_weight": 1.0},
        {},
    ),
}


@dataclass(slots=True)
class AblationResult:
    table: pd.DataFrame  # one row per variant: rows, train seconds, nDCG@10 per query type
    mlflow_run_id: str
    markdown_path: Path


def variant_weights(variant: str, weights: dict[str, float]) -> dict[str, float]:
    """The mix of one variant: only its source (or every enabled source for 'all' and recipes)."""
    if variant != ALL and variant not in TRAINING_SOURCES and variant not in RECIPES:
        raise ValueError(
            f"unknown ablation variant {variant!r}; use a source name, {ALL!r} or a recipe: {list(RECIPES)}"
        )
    every = variant == ALL or variant in RECIPES
    return {s: w if every or variant == s else 0.0 for s, w in weights.items()}


def variant_settings(
    variant: str, settings: Settings, budget: TrainingSettings
) -> tuple[ModelSettings, TrainingSettings]:
    """The architecture and optimisation a variant trains with (sources: the default recipe)."""
    model, training = RECIPES.get(variant, ({}, {}))
    return model_for_training(settings).model_copy(update=model), budget.model_copy(update=training)


def ablation_budget(settings: Settings) -> TrainingSettings:
    """The training settings every variant shares: the ablation's reduced budget."""
    config = settings.ablation
    return settings.training.model_copy(
        update={
            "max_train_images": config.max_train_images,
            "frozen_epochs": config.frozen_epochs,
            "unfrozen_epochs": config.unfrozen_epochs,
        }
    )


def train_variant(
    settings: Settings, variant: str, budget: TrainingSettings, *, progress: Progress = False
) -> tuple[Encoder, TrainResult]:
    """One variant trained on its examples (resumed from its work folder when it can), selected on
    the val split and the outside collections' val rows."""
    catalog = read_catalog(settings.catalog_path)
    frames = {
        s: pd.read_parquet(settings.source_path(s))
        for s in TRAINING_SOURCES
        if settings.source_path(s).exists()
    }
    examples = mix_examples(
        frames, variant_weights(variant, settings.training_data.source_weights), seed=budget.seed
    )
    problems = leakage_problems(examples, catalog, eval_queries=held_out_queries(settings))
    if problems:
        raise ValueError(f"ablation {variant}: leaking examples: {'; '.join(problems)}")
    folder = settings.ablation_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"examples-{variant}.parquet"
    write_parquet_atomic(examples, path)
    model, training = variant_settings(variant, settings, budget)
    encoder = build_trained_encoder(model, seed=budget.seed)
    manifests = outside_manifests(settings)  # what selection reads: in each variant's checkpoint key
    work_dir = folder / "work" / fingerprint(training, model.model_dump(mode="json"), path, manifests)
    trained = train_towers(
        encoder,
        examples,
        catalog,
        training,
        work_dir=work_dir,
        limits=decode_limits(settings.catalog),
        progress=progress,
        outside=outside_split(settings, "val"),
        backbone_features=cache_folder(settings),
    )
    return encoder, trained


def ablation_step(
    settings: Settings, *, progress: Progress = False, on_variant: Callable[[dict], None] | None = None
) -> AblationResult:
    """Train and evaluate every variant of settings.ablation; `on_variant` gets each finished row."""
    sets = EvalSets.read(settings.evaluation_dir)
    outside = read_outside_sets(settings)
    budget = ablation_budget(settings)
    folder = settings.ablation_dir
    rows, results, features = [], {}, cache_folder(settings)
    with registry.tracked_run(
        settings, run_name="ablation", params={"budget": budget.model_dump_json()}
    ) as run_id:
        for variant in settings.ablation.variants:
            encoder, trained = train_variant(settings, variant, budget, progress=progress)
            _, results[variant] = evaluate_everywhere(encoder, sets, outside, features=features)
            row = {
                "variant": variant,
                "examples": trained.rows,
                "train_s": round(trained.seconds),
                "epoch": int(trained.final.get("epoch", 0)),
                "interp.": trained.final.get("interpolation"),
                "bridge": _bridge(trained.final),
                **_headline(results[variant], outside),
            }
            rows.append(row)
            if on_variant:
                on_variant(row)
            registry.log_nested_run(
                f"ablation-{variant}",
                params={"variant": variant, "examples": trained.rows},
                metrics=_flat(results[variant]),
            )
        results["v0 (no training)"] = evaluate_everywhere(
            build_zeroshot_encoder(settings.model), sets, outside, features=features
        )[1]
        results["pretrained features (no training)"] = pretrained_results(settings, sets, outside)
        for baseline in ("v0 (no training)", "pretrained features (no training)"):
            rows.append({"variant": baseline, **_headline(results[baseline], outside)})
        table = pd.DataFrame(rows)
        markdown = folder / "table.md"
        markdown.write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n")
        (folder / "results.json").write_text(json.dumps(results, indent=2))
        (folder / "metrics.md").write_text(metrics_table(results).to_markdown(index=False, floatfmt=".3f"))
        registry.log_artifacts([markdown, folder / "metrics.md", folder / "results.json"], "ablation")
    return AblationResult(table, run_id, markdown)


def _bridge(selected: dict[str, float]) -> str | None:
    if "bridge_top_k" not in selected:
        return None
    return f"top {int(selected['bridge_top_k'])}, T {selected['bridge_temperature']:g}"


def _flat(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        f"{q.replace('/', '.')}.{name}": value
        for q, metrics in results.items()
        for name, value in metrics.items()
    }


def _headline(results: dict[str, dict[str, float]], outside: dict[str, EvalSets]) -> dict[str, float | None]:
    """nDCG@10 of the headline query types: in-domain first, then each out-of-domain collection."""
    names = [*HEADLINE, *(f"{c}:{q}" for c in outside for q in OUTSIDE_HEADLINE)]
    return {
        name.replace("text_to_image", "t2i").replace("image_to_image", "i2i"): results.get(name, {}).get(
            "ndcg_at_10"
        )
        for name in names
    }
