"""The tracking store and runs: connecting to the workspace's sqlite store (created whole), runs,
their metrics and artifacts, and the evaluation logged on a challenger's run."""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imagesearch.settings import Settings

EXPERIMENT = "imagesearch"


class RegistryError(RuntimeError):
    """A model reference that cannot be resolved; the message says what exists."""


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at the workspace's sqlite store; create the experiment with its artifact folder."""
    settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    _create_store_whole(settings.mlflow_dir / "mlflow.db")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=settings.mlflow_artifacts_dir.as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return client


def _create_store_whole(database: Path) -> None:
    """MLflow creates its sqlite schema with a chain of migrations; a process killed half-way leaves a
    database every later run fails on (found by the kill matrix of `make reliability`). So a new
    store is migrated under a temporary name and renamed into place only when complete."""
    if database.exists():
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    for stale in database.parent.glob(f".{database.name}.new-*"):  # attempts that died
        if time.time() - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
    # a fresh name per attempt: MLflow caches its store by URI
    staging = database.with_name(f".{database.name}.new-{uuid.uuid4().hex}")
    MlflowClient(tracking_uri=f"sqlite:///{staging}").search_experiments()  # runs the migrations
    os.replace(staging, database)


@contextmanager
def tracked_run(
    settings: Settings,
    *,
    run_name: str,
    params: dict | None = None,
    tags: dict | None = None,
    resume_run_id: str | None = None,
) -> Iterator[str]:
    """An MLflow run (a resumed one when `resume_run_id` names one that exists); yields its id."""
    client = connect(settings)
    if resume_run_id:
        try:
            client.get_run(resume_run_id)
        except MlflowException:
            resume_run_id = None
    with mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else run_name) as run:
        if not resume_run_id:
            mlflow.log_params(params or {})
            mlflow.set_tags(tags or {})
        yield run.info.run_id


def log_step_metrics(metrics: dict[str, float], step: int) -> None:
    """Metrics of one epoch into the active run (finite values only: MLflow refuses NaN in some stores)."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)}, step=step)


def log_artifacts(paths: list[Path], folder: str | None = None) -> None:
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=folder)


def log_evaluation(
    settings: Settings,
    results: dict[str, dict[str, dict[str, float]]],
    plots: list[str],
    challenger: str | None,
) -> str | None:
    """Metrics of every evaluated model, prefixed by its label, and the plots, on the challenger's run."""
    if challenger is None:
        return None
    client = connect(settings)
    version = client.get_model_version(settings.model.registered_name, challenger.rsplit("/", 1)[1])
    flat = {
        f"eval.{label}.{query_type}.{name}".replace(" ", "_").replace("/", "."): value
        for label, by_type in results.items()
        for query_type, metrics in by_type.items()
        for name, value in metrics.items()
        if value is not None and math.isfinite(value)
    }
    with mlflow.start_run(run_id=version.run_id):
        mlflow.log_metrics(flat)
        log_artifacts([Path(p) for p in plots], "evaluation")
    return version.run_id


def log_nested_run(run_name: str, *, params: dict, metrics: dict[str, float]) -> None:
    """A child run of the active run (one ablation variant, say)."""
    with mlflow.start_run(run_name=run_name, nested=True):
        mlflow.log_params(params)
        log_step_metrics(metrics, 0)
