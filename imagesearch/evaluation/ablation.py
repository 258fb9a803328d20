"""Which training-data sources help on held-out data: one model per source, and one on all of them.

Every variant trains the same towers with the same reduced budget (settings.ablation) on the mix of
its sources only, then is evaluated on the held-out sets exactly like a challenger. Each variant is a
nested MLflow run under one `ablation` run, which also holds the comparison table.
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
from imagesearch.evaluation.ranking import metrics_table
from imagesearch.evaluation.report import EvaluationReport
from imagesearch.evaluation.sets import EvalSets
from imagesearch.evaluation.step import evaluate_encoder
from imagesearch.models import registry
from imagesearch.models.encoders import build_two_tower_encoder
from imagesearch.settings import TRAINING_SOURCES, Settings
from imagesearch.training.loop import fingerprint, train_towers
from imagesearch.training.step import model_for_training
from imagesearch.training_data.examples import leakage_problems, mix_examples
from imagesearch.training_data.step import held_out_queries

ALL = "all"
HEADLINE = ["image_to_image", "text_to_image", "text_to_image/title", "text_to_image/tag"]


@dataclass(slots=True)
class AblationResult:
    table: pd.DataFrame  # one row per variant: rows, train seconds, nDCG@10 per query type
    mlflow_run_id: str
    markdown_path: Path


def variant_weights(variant: str, weights: dict[str, float]) -> dict[str, float]:
    """The mix of one variant: only its source (or every enabled source for 'all')."""
    if variant != ALL and variant not in TRAINING_SOURCES:
        raise ValueError(f"unknown ablation variant {variant!r}; use a source name or {ALL!r}")
    return {s: w if variant in (ALL, s) else 0.0 for s, w in weights.items()}


def ablation_step(
    settings: Settings, *, progress: bool = False, on_variant: Callable[[dict], None] | None = None
) -> AblationResult:
    """Train and evaluate every variant of settings.ablation; `on_variant` gets each finished row."""
    sets = EvalSets.read(settings.evaluation_dir)
    catalog = read_catalog(settings.catalog_path)
    frames = {
        s: pd.read_parquet(settings.source_path(s))
        for s in TRAINING_SOURCES
        if settings.source_path(s).exists()
    }
    config = settings.ablation
    budget = settings.training.model_copy(
        update={
            "max_train_images": config.max_train_images,
            "frozen_epochs": config.frozen_epochs,
            "unfrozen_epochs": config.unfrozen_epochs,
        }
    )
    folder = settings.ablation_dir
    folder.mkdir(parents=True, exist_ok=True)
    rows, results = [], {}
    with registry.tracked_run(
        settings, run_name="ablation", params={"budget": budget.model_dump_json()}
    ) as run_id:
        for variant in config.variants:
            examples = mix_examples(
                frames, variant_weights(variant, settings.training_data.source_weights), seed=budget.seed
            )
            problems = leakage_problems(examples, catalog, eval_queries=held_out_queries(settings))
            if problems:
                raise ValueError(f"ablation {variant}: leaking examples: {'; '.join(problems)}")
            path = folder / f"examples-{variant}.parquet"
            write_parquet_atomic(examples, path)
            encoder = build_two_tower_encoder(model_for_training(settings), seed=budget.seed)
            work_dir = folder / "work" / fingerprint(budget, settings.model.model_dump(mode="json"), path)
            trained = train_towers(
                encoder,
                examples,
                catalog,
                budget,
                work_dir=work_dir,
                limits=decode_limits(settings.catalog),
                progress=progress,
            )
            _, results[variant] = evaluate_encoder(encoder, sets)
            row = {
                "variant": variant,
                "examples": trained.rows,
                "train_images": trained.images,
                "train_s": round(trained.seconds),
            }
            row |= {f"{q} ndcg@10": results[variant].get(q, {}).get("ndcg_at_10") for q in HEADLINE}
            rows.append(row)
            if on_variant:
                on_variant(row)
            registry.log_nested_run(
                f"ablation-{variant}",
                params={"variant": variant, "examples": trained.rows},
                metrics=_flat(results[variant]),
            )
        table = pd.DataFrame(rows)
        markdown = folder / "table.md"
        markdown.write_text(table.to_markdown(index=False, floatfmt=".3f") + "\n\n" + _baselines(settings))
        (folder / "results.json").write_text(json.dumps(results, indent=2))
        (folder / "metrics.md").write_text(metrics_table(results).to_markdown(index=False, floatfmt=".3f"))
        registry.log_artifacts([markdown, folder / "metrics.md", folder / "results.json"], "ablation")
    return AblationResult(table, run_id, markdown)


def _flat(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        f"{q.replace('/', '.')}.{name}": value
        for q, metrics in results.items()
        for name, value in metrics.items()
    }


def _baselines(settings: Settings) -> str:
    """The untrained references from the last full evaluation, for scale (same held-out sets)."""
    try:
        report = EvaluationReport.read(settings.evaluation_dir)
    except FileNotFoundError:
        return ""
    lines = [
        f"- {label}: "
        + ", ".join(
            f"{q} ndcg@10 {report.results[label][q]['ndcg_at_10']:.3f}"
            for q in HEADLINE
            if q in report.results[label]
        )
        for label in ("v0", "pretrained features")
        if label in report.results
    ]
    return "Baselines (last offline evaluation):\n" + "\n".join(lines) if lines else ""
