"""The training-data steps: what `imagesearch training-data build|mix`, their DVC stages and assets call.

Each source step writes ``data/training/<source>.parquet`` (EXAMPLE_SCHEMA); the mix step writes
``data/training/examples.parquet``. Each is recorded as a DVC stage unless DVC runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.common.images import decode_limits
from imagesearch.common.io import write_parquet_atomic
from imagesearch.common.progress import Progress
from imagesearch.common.versioning import StageVersion
from imagesearch.common.workspace import init_workspace
from imagesearch.embeddings.backbone_cache import cache_folder
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.online_experiment import estimated_eta
from imagesearch.feedback.simulation import simulate_workspace_clicks
from imagesearch.settings import TRAINING_SOURCES, Settings
from imagesearch.training_data.clicks import click_pairs
from imagesearch.training_data.examples import (
    augmentation_pairs,
    classifier_pairs,
    leakage_problems,
    mix_examples,
    source_summary,
    tag_pairs,
    train_images,
)
from imagesearch.training_data.judgments import COLUMNS as JUDGMENT_COLUMNS
from imagesearch.training_data.judgments import (
    ImportedJudgments,
    eval_qrels,
    import_judgments,
    judgment_pairs,
    read_judgments,
)
from imagesearch.training_data.labels import classifier_labels

EXAMPLES_STAGE = "training_examples"


STAGES = {
    "augmentation": "augmentation_pairs",
    "classifier": "classifier_pairs",
    "tags": "tag_pairs",
    "judgments": "judgment_pairs",
    "clicks": "click_pairs",
}


def source_stage(source: str) -> str:
    """The DVC stage (and Dagster asset) name of a source."""
    return STAGES[source]


@dataclass(slots=True)
class SourceResult:
    source: str
    rows: int
    summary: dict
    report: dict = field(default_factory=dict)
    version: StageVersion | None = None


def source_step(
    settings: Settings, source: str, *, record: bool = True, progress: Progress = True
) -> SourceResult:
    """Build one source's training examples from the catalog (and its own input) and version them."""
    if source not in TRAINING_SOURCES:
        raise ValueError(f"unknown training-data source {source!r}; known: {', '.join(TRAINING_SOURCES)}")
    repo = init_workspace(settings) if record else None
    catalog = read_catalog(settings.catalog_path)
    frame, report = _BUILDERS[source](settings, catalog, progress)
    write_parquet_atomic(frame, settings.source_path(source))
    version = repo.record(source_stage(source), f"{source} pairs: {len(frame)} rows") if repo else None
    return SourceResult(source, len(frame), source_summary(frame).get(source, {}), report, version)


def _augmentation(settings: Settings, catalog: pd.DataFrame, progress: Progress) -> tuple[pd.DataFrame, dict]:
    frame = augmentation_pairs(catalog, per_image=settings.training_data.augmentation_per_image)
    return frame, {"views": settings.training.views}


def _classifier(settings: Settings, catalog: pd.DataFrame, progress: Progress) -> tuple[pd.DataFrame, dict]:
    config = settings.training_data
    labels = classifier_labels(
        train_images(catalog),
        settings.model,
        decode_limits(settings.catalog),
        features=cache_folder(settings),
        progress=progress,
    )
    frame = classifier_pairs(
        labels,
        threshold=config.classifier_threshold,
        prompt=config.classifier_prompt,
        same_label_positives=config.same_label_positives,
        seed=config.seed,
    )
    confident = labels[labels["probability"] >= config.classifier_threshold]
    return frame, {
        "classified": len(labels),
        "confident": len(confident),
        "labels": int(confident["label"].nunique()),
        "top_labels": confident["label"].value_counts().head(10).to_dict(),
    }


def _tags(settings: Settings, catalog: pd.DataFrame, progress: Progress) -> tuple[pd.DataFrame, dict]:
    config = settings.training_data
    frame = tag_pairs(
        catalog,
        max_share=config.tag_max_share,
        same_tag_positives=config.same_label_positives,
        seed=config.seed,
    )
    return frame, {}


def _judgments(settings: Settings, catalog: pd.DataFrame, progress: Progress) -> tuple[pd.DataFrame, dict]:
    config = settings.training_data
    qrels_path = settings.judgments_eval_path
    if config.judgments_path is None:
        imported = ImportedJudgments(_no_judgments(), pd.DataFrame(columns=[*JUDGMENT_COLUMNS, "reason"]))
        report: dict = {"status": "no judgments file configured"}
    else:
        table = read_judgments(config.judgments_path)
        imported = import_judgments(table, catalog, eval_fraction=config.judgment_eval_fraction)
        report = {**imported.report, "file": str(config.judgments_path), "eval_qrels": str(qrels_path)}
    # always written (empty without a file): the held-out qrels are a versioned output of this stage
    write_parquet_atomic(eval_qrels(imported.accepted), qrels_path)
    write_parquet_atomic(imported.rejected.astype("string"), settings.judgments_rejected_path)
    return judgment_pairs(imported.accepted, catalog, seed=config.seed), report


def _no_judgments() -> pd.DataFrame:
    return pd.DataFrame(columns=["query_text", "query_image_id", "image_id", "grade", "query", "split"])


def _clicks(settings: Settings, catalog: pd.DataFrame, progress: Progress) -> tuple[pd.DataFrame, dict]:
    config = settings.training_data
    log = ClickLog(settings.effective_click_log_url)
    report: dict = {"real_queries": log.count_queries(simulated=False)}
    if report["real_queries"] == 0 and config.simulate_clicks_when_empty and log.count_queries() == 0:
        report["simulated_clicks_written"] = simulate_workspace_clicks(settings, log, catalog)
    tables = log.read(include_simulated=report["real_queries"] == 0)
    report |= {
        "queries": len(tables.queries),
        "impressions": len(tables.impressions),
        "clicks": len(tables.clicks),
    }
    # the examination curve measured on the randomized slice, once it holds enough queries
    estimated = estimated_eta(tables, settings.experiment.min_swap_queries)
    eta = config.propensity_eta if estimated is None else estimated
    report |= {
        "propensity_eta": round(eta, 4),
        "eta_source": "configured" if estimated is None else "estimated",
    }
    frame = click_pairs(tables, catalog, eta=eta, max_weight=config.max_click_weight)
    return frame, report


_BUILDERS = {
    "augmentation": _augmentation,
    "classifier": _classifier,
    "tags": _tags,
    "judgments": _judgments,
    "clicks": _clicks,
}


@dataclass(slots=True)
class MixResult:
    rows: int
    summary: dict
    problems: list[str]
    version: StageVersion | None


def enabled_sources(settings: Settings) -> list[str]:
    return [s for s in TRAINING_SOURCES if settings.training_data.source_weights.get(s, 0) > 0]


def mix_step(settings: Settings, *, record: bool = True) -> MixResult:
    """Mix the enabled sources' examples with their weights; report (never hide) leakage problems."""
    repo = init_workspace(settings) if record else None
    frames = {}
    for source in enabled_sources(settings):
        path = settings.source_path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"no {source} examples at {path}: build them first (asset {source_stage(source)})"
            )
        frames[source] = pd.read_parquet(path)
    config = settings.training_data
    mixed = mix_examples(frames, config.source_weights, seed=config.seed)
    write_parquet_atomic(mixed, settings.examples_path)
    problems = leakage_problems(
        mixed, read_catalog(settings.catalog_path), eval_queries=held_out_queries(settings)
    )
    version = repo.record(EXAMPLES_STAGE, f"training examples: {len(mixed)} rows") if repo else None
    return MixResult(len(mixed), source_summary(mixed), problems, version)


def held_out_queries(settings: Settings) -> set[str]:
    path = settings.judgments_eval_path
    return set(pd.read_parquet(path)["query"].dropna()) if path.exists() else set()
