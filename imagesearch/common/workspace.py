"""The workspace: the one local folder holding data, DVC, MLflow and Dagster state."""

from __future__ import annotations

from pathlib import Path

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
