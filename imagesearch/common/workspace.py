"""The workspace: the one local folder holding data, DVC, MLflow and Dagster state."""

from __future__ import annotations

import fcntl
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from imagesearch.common.versioning import DataRepo
from imagesearch.settings import PROJECT_ROOT, Settings

PIPELINE_FILE = PROJECT_ROOT / "dvc.yaml"
# Inside the workspace repository only pipeline outputs (via DVC) and dvc.lock are versioned.
UNVERSIONED = [
    "/corpus/",
    "/dagster/",
    "/mlflow/",
    "/dvc/",
    "/.imagesearch.lock",
    "/.locks/",
    "/logs/",
    "/clicklog/",
    "/data/training/work/",
]

DAGSTER_YAML = """\
# Written by `imagesearch init`. Local sqlite storage; telemetry off because the network is closed.
telemetry:
  enabled: false
storage:
  sqlite:
    base_dir: {storage}
"""


def data_repo(settings: Settings) -> DataRepo:
    return DataRepo(
        settings.home,
        dvc=settings.dvc_command,
        pipeline_file=PIPELINE_FILE,
        cache_dir=settings.dvc_cache_dir,
        remote_dir=settings.dvc_remote_dir,
    )


def init_workspace(settings: Settings) -> DataRepo:
    """Create every state folder, the Dagster instance config and the data repository (idempotent)."""
    for folder in (
        settings.data_dir,
        settings.catalog_dir,
        settings.corpus_dir,
        settings.index_dir,
        settings.dagster_home,
        settings.mlflow_artifacts_dir,
        settings.dvc_remote_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    dagster_yaml = settings.dagster_home / "dagster.yaml"
    wanted = DAGSTER_YAML.format(storage=settings.dagster_home / "storage")
    if not dagster_yaml.exists() or dagster_yaml.read_text() != wanted:
        dagster_yaml.write_text(wanted)
    repo = data_repo(settings)
    repo.ensure_initialised(UNVERSIONED)
    return repo


def is_initialised(settings: Settings) -> bool:
    return (settings.home / ".dvc").is_dir() and (settings.dagster_home / "dagster.yaml").is_file()


def require_workspace(settings: Settings) -> Path:
    if not is_initialised(settings):
        raise FileNotFoundError(f"workspace {settings.home} is not initialised: run `imagesearch init`")
    return settings.home


class StageBusy(RuntimeError):
    """Another run is writing the same stage's outputs in this workspace."""


@contextmanager
def stage_lock(settings: Settings, stage: str) -> Iterator[None]:
    """At most one writer of `stage` per workspace: a second one fails at once, naming the first.
    An flock: a killed writer releases it with its process, so nothing stale is left to clean up."""
    folder = settings.home / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{stage}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a live process"
            raise StageBusy(
                f"another {stage} run is writing this workspace ({holder}): wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


P = ParamSpec("P")
R = TypeVar("R")


def one_writer(stage: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a step (settings first) under `stage_lock`: CLI, DVC stage and asset alike."""

    def wrap(step: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(step)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            with stage_lock(args[0], stage):
                return step(*args, **kwargs)

        return locked

    return wrap
