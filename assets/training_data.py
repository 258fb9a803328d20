"""Stage: training examples, one asset per source, and their mix (guarded against leakage)."""

import dagster as dg
import pandas as pd

from assets.metadata import version_metadata
from dagster_project.resources import WorkspaceResource
from imagesearch.catalog.build import read_catalog
from imagesearch.training_data.examples import leakage_problems
from imagesearch.training_data.step import (
    STAGES,
    SourceResult,
    enabled_sources,
    held_out_queries,
    mix_step,
    source_step,
)

DESCRIPTIONS = {
    "augmentation": "Self-supervised rows: two random views (crop, flip, colour jitter, grayscale, blur) "
    "of each train image are positives of each other.",
    "classifier": "The pretrained ImageNet classifier's confident labels: (image, prompted class name) rows "
    "and same-label image pairs; the confidence threshold is a setting.",
    "tags": "Images sharing a specific tag are positives; every tag, title and caption is a text positive "
    "of its image.",
    "judgments": "Imported human judgments (query text or image, image, grade 0-3), validated with a report "
    "of rejected rows; queries are split by hash and only the training side becomes examples.",
    "clicks": "The impression/click log (simulated position-biased clicks while it has no real traffic): "
    "clicked results are positives weighted by inverse propensity, skipped results above are negatives.",
}


def _source_asset(source: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=STAGES[source],
        deps=["image_catalog", "search_index"] if source == "clicks" else ["image_catalog"],
        group_name="training_data",
        kinds={"python", "parquet", "dvc"},
        owners=["team:imagesearch"],
        description=DESCRIPTIONS[source] + " Schema: anchor_id, positive_id | positive_text, negative_id, "
        "weight, source. Versioned with DVC.",
    )
    def build(context: dg.AssetExecutionContext, workspace: WorkspaceResource) -> dg.MaterializeResult:
        report = source_step(workspace.settings(), source, progress=context.log.info)
        return dg.MaterializeResult(metadata=source_metadata(report))

    return build


def source_metadata(result: SourceResult) -> dict:
    return {
        "rows": result.rows,
        "summary": dg.MetadataValue.json(result.summary or {}),
        "report": dg.MetadataValue.json(result.report),
        **version_metadata(result.version),
    }


source_assets = [_source_asset(source) for source in STAGES]


@dg.asset(
    deps=list(STAGES.values()),
    group_name="training_data",
    kinds={"python", "parquet", "dvc"},
    owners=["team:imagesearch"],
    description="The enabled sources mixed with their configured weights (training_data.source_weights), "
    "shuffled; never an image of the val/test split or a held-out judgment query (blocking check).",
)
def training_examples(workspace: WorkspaceResource) -> dg.MaterializeResult:
    result = mix_step(workspace.settings())
    return dg.MaterializeResult(
        metadata={
            "rows": result.rows,
            "by_source": dg.MetadataValue.json(result.summary),
            "sources_enabled": ", ".join(enabled_sources(workspace.settings())),
            **version_metadata(result.version),
        }
    )


@dg.asset_check(asset=training_examples, blocking=True, description="no val/test image, no held-out query")
def no_evaluation_leakage(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    settings = workspace.settings()
    problems = leakage_problems(
        pd.read_parquet(settings.examples_path),
        read_catalog(settings.catalog_path),
        eval_queries=held_out_queries(settings),
    )
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": problems or "none"})
