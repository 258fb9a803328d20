"""`imagesearch doctor`: resolved settings, where state lives, versions, GPU, and what is missing."""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata

from imagesearch.common.workspace import is_initialised
from imagesearch.settings import Settings

STACK = (
    "imagesearch",
    "torch",
    "torchvision",
    "timm",
    "faiss-cpu",
    "faiss-gpu",
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "dagster",
    "dagster-webserver",
    "mlflow",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "pydantic",
    "sentence-transformers",
    "transformers",
)


@dataclass
class DoctorReport:
    settings: dict
    locations: dict[str, dict]
    versions: dict[str, str]
    gpu: dict[str, object]
    missing: list[str] = field(default_factory=list)


def diagnose(settings: Settings) -> DoctorReport:
    locations = {
        name: {"path": str(path), "exists": path.exists()}
        for name, path in {
            "home": settings.home,
            "data": settings.data_dir,
            "catalog": settings.catalog_path,
            "corpus": settings.corpus_dir,
            "indexes": settings.index_dir,
            "dagster_home": settings.dagster_home,
            "mlflow_store": settings.mlflow_dir / "mlflow.db",
            "mlflow_artifacts": settings.mlflow_artifacts_dir,
            "dvc_cache": settings.dvc_cache_dir,
            "dvc_remote": settings.dvc_remote_dir,
        }.items()
    }
    versions = {name: _version(name) for name in STACK}
    versions["python"] = platform.python_version()
    versions["dvc"] = _dvc_version(settings)
    report = DoctorReport(settings.model_dump(mode="json"), locations, versions, _gpu())
    report.missing = _missing(settings, report)
    return report


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _dvc_version(settings: Settings) -> str:
    if settings.dvc_command is None:
        return "not installed"
    result = subprocess.run([str(settings.dvc_command), "--version"], capture_output=True, text=True)
    return result.stdout.strip() or f"broken ({result.stderr.strip()[:80]})"


def _gpu() -> dict[str, object]:
    try:
        import torch
    except ImportError:
        return {"torch_cuda": False, "reason": "torch not installed"}
    info: dict[str, object] = {"torch_cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    from imagesearch.index.search import index_gpu_count

    info["faiss_gpus"] = index_gpu_count()
    return info


def _missing(settings: Settings, report: DoctorReport) -> list[str]:
    missing = []
    if report.versions["dvc"] == "not installed":
        missing.append("DVC: run `make setup` (installs it in .tools/dvc)")
    if not is_initialised(settings):
        missing.append(f"workspace {settings.home}: run `imagesearch init`")
    for source in settings.effective_sources:
        if not source.path.is_dir():
            hint = (
                "run `imagesearch corpus fetch`"
                if source.path == settings.default_corpus_root
                else "check the path"
            )
            missing.append(f"image source {source.name!r} at {source.path}: {hint}")
    if not settings.catalog_path.exists():
        missing.append("catalog: run `imagesearch catalog build` or materialize image_catalog")
    if shutil.which("git") is None:
        missing.append("git: needed for data versioning")
    return missing
