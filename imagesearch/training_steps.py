"""Training-data and training steps: what the CLI, the DVC stages and the Dagster assets call.

Each source step writes ``data/training/<source>.parquet`` (EXAMPLE_SCHEMA), the mix step writes
``data/training/examples.parquet``, the train step trains, logs an MLflow run, registers the model as
`challenger` and writes the encoder to ``data/model``. Each is recorded as a DVC stage unless DVC runs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch import registry
from imagesearch.catalog import read_catalog, write_parquet_atomic
from imagesearch.clicklog import ClickLog
from imagesearch.clicks import click_pairs, simulate_clicks, tag_queries
from imagesearch.encoders import build_two_tower_encoder
from imagesearch.index import load_index
from imagesearch.judgments import COLUMNS as JUDGMENT_COLUMNS
from imagesearch.judgments import (
    ImportedJudgments,
    eval_qrels,
    import_judgments,
    judgment_pairs,
    read_judgments,
)
from imagesearch.labels import classifier_labels
from imagesearch.plots import ExampleQuery, result_grid, training_curves
from imagesearch.settings import PROJECT_ROOT, TRAINING_SOURCES, Settings
from imagesearch.steps import decode_limits
from imagesearch.train import EpochCallback, TrainResult, ValidationSet, fingerprint, train_towers
from imagesearch.training_data import (
    augmentation_pairs,
    classifier_pairs,
    leakage_problems,
    mix_examples,
    source_summary,
    tag_pairs,
    train_images,
)
from imagesearch.versioning import StageVersion, code_version
from imagesearch.workspace import init_workspace

EXAMPLES_STAGE = "training_examples"
TRAIN_STAGE = "train"


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
    settings: Settings, source: str, *, record: bool = True, progress: bool = True
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


def _augmentation(settings: Settings, catalog: pd.DataFrame, progress: bool) -> tuple[pd.DataFrame, dict]:
    frame = augmentation_pairs(catalog, per_image=settings.training_data.augmentation_per_image)
    return frame, {"views": settings.training.views}


def _classifier(settings: Settings, catalog: pd.DataFrame, progress: bool) -> tuple[pd.DataFrame, dict]:
    config = settings.training_data
    labels = classifier_labels(
        train_images(catalog), settings.model, decode_limits(settings), progress=progress
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


def _tags(settings: Settings, catalog: pd.DataFrame, progress: bool) -> tuple[pd.DataFrame, dict]:
    config = settings.training_data
    frame = tag_pairs(
        catalog,
        max_share=config.tag_max_share,
        same_tag_positives=config.same_label_positives,
        seed=config.seed,
    )
    return frame, {}


def _judgments(settings: Settings, catalog: pd.DataFrame, progress: bool) -> tuple[pd.DataFrame, dict]:
    config = settings.training_data
    qrels_path = settings.training_dir / "judgments_eval.parquet"
    if config.judgments_path is None:
        imported = ImportedJudgments(_no_judgments(), pd.DataFrame(columns=[*JUDGMENT_COLUMNS, "reason"]))
        report: dict = {"status": "no judgments file configured"}
    else:
        table = read_judgments(config.judgments_path)
        imported = import_judgments(table, catalog, eval_fraction=config.judgment_eval_fraction)
        report = {**imported.report, "file": str(config.judgments_path), "eval_qrels": str(qrels_path)}
    # always written (empty without a file): the held-out qrels are a versioned output of this stage
    write_parquet_atomic(eval_qrels(imported.accepted), qrels_path)
    write_parquet_atomic(
        imported.rejected.astype("string"), settings.training_dir / "judgments_rejected.parquet"
    )
    return judgment_pairs(imported.accepted, catalog, seed=config.seed), report


def _no_judgments() -> pd.DataFrame:
    return pd.DataFrame(columns=["query_text", "query_image_id", "image_id", "grade", "query", "split"])


def _clicks(settings: Settings, catalog: pd.DataFrame, progress: bool) -> tuple[pd.DataFrame, dict]:
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
    frame = click_pairs(tables, catalog, eta=config.propensity_eta, max_weight=config.max_click_weight)
    return frame, report


def simulate_workspace_clicks(settings: Settings, log: ClickLog, catalog: pd.DataFrame) -> int:
    """Position-biased simulated clicks on the workspace's real index (relevance: shared tags)."""
    loaded = load_index(settings.search_index_dir)
    encoder = registry.load_encoder(loaded.manifest.model, settings)
    config = settings.training_data

    def ranker(text: str) -> list[tuple[str, float]]:
        scores, positions = loaded.search(encoder.encode_texts([text]), config.simulated_depth)
        pairs = zip(scores[0], positions[0], strict=True)
        return [(str(loaded.ids.at[int(p), "id"]), float(s)) for s, p in pairs if p >= 0]

    queries = tag_queries(catalog, count=config.simulated_queries, seed=config.seed)
    return simulate_clicks(
        log,
        queries,
        ranker,
        sessions=config.simulated_sessions,
        eta=config.propensity_eta,
        model_version=f"simulated:{loaded.manifest.model}",
        seed=config.seed,
    )


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
    path = settings.training_dir / "judgments_eval.parquet"
    return set(pd.read_parquet(path)["query"].dropna()) if path.exists() else set()


@dataclass(slots=True)
class TrainStepResult:
    result: TrainResult
    registered: registry.RegisteredEncoder
    version: StageVersion | None


def train_step(
    settings: Settings, *, record: bool = True, progress: bool = True, on_epoch: EpochCallback | None = None
) -> TrainStepResult:
    """Train a challenger on the mixed examples, tracked in MLflow; resumes an interrupted run."""
    repo = init_workspace(settings) if record else None
    examples = pd.read_parquet(settings.examples_path)
    catalog = read_catalog(settings.catalog_path)
    problems = leakage_problems(examples, catalog, eval_queries=held_out_queries(settings))
    if problems:
        raise ValueError(f"refusing to train on leaking examples: {'; '.join(problems)}")
    work_dir = (
        settings.training_dir
        / "work"
        / fingerprint(settings.training, settings.model.model_dump(mode="json"), settings.examples_path)
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    run_file = work_dir / "mlflow_run_id"
    resume = run_file.read_text().strip() if run_file.exists() else None
    encoder = build_two_tower_encoder(settings.model, seed=settings.training.seed)
    with registry.tracked_run(
        settings,
        run_name="train-two-towers",
        params=_run_params(settings),
        tags=_run_tags(settings, repo),
        resume_run_id=resume,
    ) as run_id:
        run_file.write_text(run_id)

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            registry.log_step_metrics({k: v for k, v in metrics.items() if k != "epoch"}, epoch)
            if on_epoch is not None:
                on_epoch(epoch, metrics)

        result = train_towers(
            encoder,
            examples,
            catalog,
            settings.training,
            work_dir=work_dir,
            limits=decode_limits(settings),
            on_epoch=log_epoch,
            progress=progress,
        )
        registry.log_step_metrics({k: v for k, v in result.history[0].items() if k != "epoch"}, 0)
        registry.log_step_metrics(
            {
                "train_seconds": result.seconds,
                "cache_seconds": result.cache_seconds,
                "train_rows": result.rows,
            },
            0,
        )
        registered = _registered_before(work_dir)
        if registered is None:  # a finished run re-materialized with the same inputs registers nothing new
            registry.log_artifacts(_pictures(encoder, catalog, result, work_dir), folder="plots")
            registered = registry.register_encoder(encoder, settings, alias=registry.CHALLENGER)
            (work_dir / "registered.json").write_text(json.dumps(asdict(registered)))
    encoder.save(settings.trained_model_dir / "encoder")
    summary = {
        "mlflow_run_id": registered.run_id,
        "model_version": registered.version,
        **result.final,
        "untrained": result.history[0],
    }
    (settings.trained_model_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    version = repo.record(TRAIN_STAGE, f"train: challenger v{registered.version}") if repo else None
    return TrainStepResult(result, registered, version)


def _registered_before(work_dir: Path) -> registry.RegisteredEncoder | None:
    path = work_dir / "registered.json"
    return registry.RegisteredEncoder(**json.loads(path.read_text())) if path.exists() else None


def _run_params(settings: Settings) -> dict[str, str]:
    groups = {"model": settings.model, "training": settings.training, "training_data": settings.training_data}
    return {
        f"{group}.{key}": str(value)[:500]
        for group, values in groups.items()
        for key, value in values.model_dump(mode="json").items()
    }


def _run_tags(settings: Settings, repo) -> dict[str, str]:
    tags = code_version(PROJECT_ROOT)
    if repo is not None:
        for stage in [EXAMPLES_STAGE, *(source_stage(s) for s in enabled_sources(settings))]:
            for path, md5 in repo.current(stage).outputs.items():
                tags[f"dvc.{Path(path).name}"] = md5
        tags["dvc.workspace_commit"] = repo.current(EXAMPLES_STAGE).commit
    return tags


def _pictures(encoder, catalog: pd.DataFrame, result: TrainResult, work_dir: Path) -> list[Path]:
    """Loss/recall curves and a grid of val-split text->image and image->image examples."""
    curves = training_curves(result.history, work_dir / "training_curves.png")
    validation = ValidationSet.from_catalog(catalog)
    if not validation.image_ids:
        return [curves]
    vectors = encoder.encode_images([Path(p) for p in validation.paths[:500]])
    paths = validation.paths[: len(vectors)]
    rng = np.random.default_rng(0)
    queries = []
    for text in rng.choice(validation.query_texts, size=min(3, len(validation.query_texts)), replace=False):
        scores = vectors @ encoder.encode_texts([str(text)])[0]
        queries.append(ExampleQuery(f'"{text}"', None, _top(scores, paths)))
    for position in rng.choice(len(paths), size=min(3, len(paths)), replace=False):
        scores = vectors @ vectors[position]
        scores[position] = -np.inf
        queries.append(ExampleQuery("more like this", paths[position], _top(scores, paths)))
    return [curves, result_grid(queries, work_dir / "example_results.png")]


def _top(scores: np.ndarray, paths: list[str], k: int = 6) -> list[tuple[str, float]]:
    order = np.argsort(-scores)[:k]
    return [(paths[i], float(scores[i])) for i in order]
