"""`Settings`: the resolved configuration of one workspace, and every location inside it.

All local state lives under `home`; each stage's outputs have one property here (their file names are
defined nowhere else). The per-stage groups are in `stages.py`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagesearch.settings.judging import AblationSettings, DriftSettings, EvaluationSettings
from imagesearch.settings.online import ExperimentSettings, UpSettings
from imagesearch.settings.serving import ServiceSettings
from imagesearch.settings.stages import (
    CatalogSettings,
    ClusterSettings,
    EmbeddingSettings,
    IndexSettings,
    ModelSettings,
    SourceSettings,
    TrainingDataSettings,
    TrainingSettings,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS_NAME = "openclipart"


class Settings(BaseSettings):
    """Resolved configuration of one imagesearch workspace."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGESEARCH_", env_nested_delimiter="__", env_file=None, extra="ignore"
    )

    home: Path = Field(
        default=PROJECT_ROOT / ".imagesearch",
        description="the one folder holding all local state: data, DVC, MLflow, Dagster",
    )
    sources: list[SourceSettings] | None = Field(
        default=None, description="image folders to catalogue; default: the fetched openclipart corpus"
    )
    dvc_executable: Path | None = Field(
        default=None, description="DVC lives in its own venv; default: .tools/dvc/bin/dvc, then PATH"
    )
    catalog: CatalogSettings = CatalogSettings()
    model: ModelSettings = ModelSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    index: IndexSettings = IndexSettings()
    training_data: TrainingDataSettings = TrainingDataSettings()
    training: TrainingSettings = TrainingSettings()
    service: ServiceSettings = ServiceSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    drift: DriftSettings = DriftSettings()
    ablation: AblationSettings = AblationSettings()
    cluster: ClusterSettings = ClusterSettings()
    experiment: ExperimentSettings = ExperimentSettings()
    up: UpSettings = UpSettings()
    sensors_on: bool = Field(
        default=False,
        description="start the sensors that keep the index current (new images, a moved champion) "
        "switched on; `make up` sets it, so a promotion reaches the service untouched",
    )
    retrain_cron: str = Field(
        default="0 3 * * 1", description="cron of the weekly_retraining schedule (off until switched on)"
    )
    click_log_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the impression/click log; default: sqlite in home"
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # --- derived locations: everything lives under `home` -------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def corpus_dir(self) -> Path:
        return self.home / "corpus"

    @property
    def catalog_dir(self) -> Path:
        return self.data_dir / "catalog"

    @property
    def catalog_path(self) -> Path:
        return self.catalog_dir / "catalog.parquet"

    @property
    def quarantine_path(self) -> Path:
        return self.catalog_dir / "quarantine.parquet"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def embeddings_dir(self) -> Path:
        """One sub-folder per model version: embeddings/<model key>/shard-<k>.parquet."""
        return self.data_dir / "embeddings"

    @property
    def backbone_features_dir(self) -> Path:
        """Pooled backbone features per image file, one SQLite file per backbone (a cache: deletable)."""
        return self.data_dir / "backbone-features"

    @property
    def search_index_dir(self) -> Path:
        """The workspace's index over the catalog (what the service serves), versioned with DVC."""
        return self.index_dir / "catalog"

    @property
    def challenger_index_dir(self) -> Path:
        """The challenger's own index (rebuilt after training): what the service's experiments use."""
        return self.index_dir / "challenger"

    @property
    def logs_dir(self) -> Path:
        """One log file per process `make up` supervises, and the supervisor's own."""
        return self.home / "logs"

    @property
    def thumbnails_dir(self) -> Path:
        """The service's thumbnail cache: one PNG per image id and side, made on first request."""
        return self.home / "cache" / "thumbnails"

    @property
    def training_dir(self) -> Path:
        """Training examples per source (<source>.parquet), the mix, feature caches, checkpoints."""
        return self.data_dir / "training"

    @property
    def examples_path(self) -> Path:
        return self.training_dir / "examples.parquet"

    def source_path(self, source: str) -> Path:
        return self.training_dir / f"{source}.parquet"

    @property
    def judgments_eval_path(self) -> Path:
        """The held-out side of the imported judgments: evaluation qrels, never training data."""
        return self.training_dir / "judgments_eval.parquet"

    @property
    def judgments_rejected_path(self) -> Path:
        return self.training_dir / "judgments_rejected.parquet"

    @property
    def trained_model_dir(self) -> Path:
        """The last trained encoder (a saved folder, versioned with DVC) and its metrics."""
        return self.data_dir / "model"

    @property
    def trained_encoder_dir(self) -> Path:
        return self.trained_model_dir / "encoder"

    @property
    def trained_metrics_path(self) -> Path:
        """The last training's summary (DVC metrics file): run id, version, final and untrained metrics."""
        return self.trained_model_dir / "metrics.json"

    @property
    def evaluation_dir(self) -> Path:
        """Held-out evaluation sets (versioned with DVC) and the last evaluation's report and plots."""
        return self.data_dir / "evaluation"

    @property
    def ood_corpus_dir(self) -> Path:
        """Out-of-domain collections: fetched for evaluation, never catalogued or trained on."""
        return self.corpus_dir / "ood"

    @property
    def ood_evaluation_dir(self) -> Path:
        """One folder of evaluation sets per out-of-domain collection (its test split)."""
        return self.evaluation_dir / "ood"

    @property
    def ablation_dir(self) -> Path:
        return self.data_dir / "ablation"

    @property
    def online_dir(self) -> Path:
        """Online metrics from the click log (a table and a plot), remade by the online asset."""
        return self.data_dir / "online"

    @property
    def effective_click_log_url(self) -> str:
        return self.click_log_url or f"sqlite:///{self.home / 'clicklog' / 'clicks.sqlite'}"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def dvc_cache_dir(self) -> Path:
        return self.home / "dvc" / "cache"

    @property
    def dvc_remote_dir(self) -> Path:
        return self.home / "dvc" / "remote"

    @property
    def default_corpus_root(self) -> Path:
        return self.corpus_dir / DEFAULT_CORPUS_NAME

    @property
    def effective_sources(self) -> list[SourceSettings]:
        if self.sources is not None:
            return self.sources
        return [SourceSettings(name=DEFAULT_CORPUS_NAME, path=self.default_corpus_root)]

    @property
    def dvc_command(self) -> Path | None:
        """The DVC executable, or None when it is not installed."""
        if self.dvc_executable is not None:
            return self.dvc_executable if self.dvc_executable.exists() else None
        bundled = PROJECT_ROOT / ".tools" / "dvc" / "bin" / "dvc"
        if bundled.exists():
            return bundled
        found = shutil.which("dvc")
        return Path(found) if found else None
