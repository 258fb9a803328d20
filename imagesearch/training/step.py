"""The training step: what `imagesearch train`, the DVC stage `train` and the asset `trained_model` call.

Trains a challenger on the mixed examples, logs an MLflow run, registers the model as `challenger`
and writes the encoder to ``data/model``; recorded as a DVC stage unless DVC runs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.common.images import decode_limits
from imagesearch.common.io import write_atomic
from imagesearch.common.plots import ExampleQuery, result_grid, training_curves
from imagesearch.common.progress import Progress
from imagesearch.common.versioning import StageVersion, code_version
from imagesearch.common.workspace import init_workspace, one_writer
from imagesearch.embeddings.backbone_cache import cache_folder, encode_files
from imagesearch.evaluation.sets import outside_manifests, outside_split
from imagesearch.models import registry
from imagesearch.models.builders import build_trained_encoder
from imagesearch.settings import PROJECT_ROOT, ModelSettings, Settings
from imagesearch.training.loop import EpochCallback, TrainResult, fingerprint, train_towers
from imagesearch.training.validation import ValidationSet
from imagesearch.training_data.examples import (
    leakage_problems,
)
from imagesearch.training_data.step import EXAMPLES_STAGE, enabled_sources, held_out_queries, source_stage

TRAIN_STAGE = "train"


@dataclass(slots=True)
class TrainStepResult:
    result: TrainResult
    registered: registry.RegisteredEncoder
    version: StageVersion | None


@one_writer("training")
def train_step(
    settings: Settings,
    *,
    record: bool = True,
    progress: Progress = True,
    on_epoch: EpochCallback | None = None,
) -> TrainStepResult:
    """Train a challenger on the mixed examples, tracked in MLflow; resumes an interrupted run."""
    repo = init_workspace(settings) if record else None
    examples = pd.read_parquet(settings.examples_path)
    catalog = read_catalog(settings.catalog_path)
    problems = leakage_problems(examples, catalog, eval_queries=held_out_queries(settings))
    if problems:
        raise ValueError(f"refusing to train on leaking examples: {'; '.join(problems)}")
    outside = outside_split(settings, "val")  # fetched first: their manifests are in the fingerprint
    model = settings.model.model_dump(mode="json")
    work_dir = (
        settings.training_dir
        / "work"
        / fingerprint(settings.training, model, settings.examples_path, outside_manifests(settings))
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    run_file = work_dir / "mlflow_run_id"
    resume = run_file.read_text().strip() if run_file.exists() else None
    encoder = build_trained_encoder(model_for_training(settings), seed=settings.training.seed)
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
            limits=decode_limits(settings.catalog),
            on_epoch=log_epoch,
            progress=progress,
            outside=outside,
            backbone_features=cache_folder(settings),
        )
        registry.log_step_metrics({k: v for k, v in result.history[0].items() if k != "epoch"}, 0)
        registry.log_step_metrics(
            {
                **{f"choice.{name}.{candidate}": score for name, candidate, score in _choices(result)},
                "train_seconds": result.seconds,
                "cache_seconds": result.cache_seconds,
                "train_rows": result.rows,
            },
            0,
        )
        # a finished run re-materialized with the same inputs, or one killed right after registering,
        # registers nothing new
        registered = _registered_before(work_dir) or registry.version_of_run(
            settings, run_id, alias=registry.CHALLENGER
        )
        if registered is None:
            pictures = _pictures(encoder, catalog, result, work_dir, cache_folder(settings))
            registry.log_artifacts(pictures, folder="plots")
            registered = registry.register_encoder(encoder, settings, alias=registry.CHALLENGER)
        write_atomic(
            work_dir / "registered.json", lambda path: path.write_text(json.dumps(asdict(registered)))
        )
    encoder.save(settings.trained_encoder_dir)
    summary = {
        "mlflow_run_id": registered.run_id,
        "model_version": registered.version,
        **result.final,
        "untrained": result.history[0],
        "choice_scores": result.choice_scores,
    }
    settings.trained_metrics_path.write_text(json.dumps(summary, indent=2))
    version = repo.record(TRAIN_STAGE, f"train: challenger v{registered.version}") if repo else None
    return TrainStepResult(result, registered, version)


def _choices(result: TrainResult) -> list[tuple[str, str, float]]:
    """Every candidate's validation score (bridge, raw block): what each choice was made against."""
    scores = result.choice_scores
    return [(name, candidate, score) for name in scores for candidate, score in scores[name].items()]


def model_for_training(settings: Settings) -> ModelSettings:
    """The towers' architecture on the training device (`training.device`), not the serving one."""
    return settings.model.model_copy(update={"device": settings.training.device})


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


def _pictures(
    encoder, catalog: pd.DataFrame, result: TrainResult, work_dir: Path, features: Path | None
) -> list[Path]:
    """Loss/recall curves and a grid of val-split text->image and image->image examples."""
    curves = training_curves(result.history, work_dir / "training_curves.png")
    validation = ValidationSet.from_catalog(catalog)
    if not validation.image_ids:
        return [curves]
    vectors = encode_files(encoder, validation.paths[:500], features)
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
