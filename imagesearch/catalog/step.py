"""The catalog step: what `imagesearch catalog build`, the DVC stage `catalog` and the asset
`image_catalog` call.

A step = one core function on the workspace's settings + (optionally) recording its outputs as a
new DVC version. Recording is skipped when DVC itself runs the step (`dvc repro` records on its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagesearch.catalog.build import CatalogReport, build_catalog
from imagesearch.common.versioning import StageVersion
from imagesearch.common.workspace import init_workspace, one_writer
from imagesearch.settings import Settings, SourceSettings

CATALOG_STAGE = "catalog"


@dataclass(frozen=True, slots=True)
class StepResult:
    report: CatalogReport
    version: StageVersion | None


@one_writer("catalog")
def catalog_step(
    settings: Settings,
    *,
    extra_images: list[Path] | None = None,
    full_rescan: bool = False,
    record: bool = True,
    progress: bool = True,
) -> StepResult:
    """Catalogue the workspace's sources (plus `extra_images` folders) and version the result."""
    repo = init_workspace(settings) if record else None
    sources = [*settings.effective_sources, *(_adhoc_source(path) for path in extra_images or [])]
    report = build_catalog(
        sources,
        settings.catalog,
        catalog_path=settings.catalog_path,
        quarantine_path=settings.quarantine_path,
        full_rescan=full_rescan,
        progress=progress,
    )
    message = f"catalog: {report.catalogued} images, {report.quarantined} quarantined"
    version = repo.record(CATALOG_STAGE, message) if repo else None
    return StepResult(report, version)


def _adhoc_source(path: Path) -> SourceSettings:
    name = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in path.resolve().name) or "images"
    return SourceSettings(name=name, path=path)
