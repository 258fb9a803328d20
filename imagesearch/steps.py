"""Pipeline steps: what the CLI, the DVC stages and the Dagster assets all call.

A step = one core function on the workspace's settings + (optionally) recording its outputs as a
new DVC version. Recording is skipped when DVC itself runs the step (`dvc repro` records on its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagesearch.backfill import SHARD_KEYS, BackfillReport, backfill, model_key, read_model_embeddings
from imagesearch.catalog import CatalogReport, build_catalog, read_catalog
from imagesearch.images import DecodeLimits
from imagesearch.index import IndexManifest, build_tuned_index
from imagesearch.registry import load_encoder, pin_reference
from imagesearch.settings import Settings, SourceSettings
from imagesearch.versioning import StageVersion
from imagesearch.workspace import init_workspace

CATALOG_STAGE = "catalog"
EMBEDDINGS_STAGE = "embeddings"
INDEX_STAGE = "index"


@dataclass(frozen=True, slots=True)
class StepResult:
    report: CatalogReport
    version: StageVersion | None


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


def decode_limits(settings: Settings) -> DecodeLimits:
    """The catalog's decode limits, applied again wherever catalog images are read."""
    catalog = settings.catalog
    return DecodeLimits(catalog.max_image_pixels, catalog.min_side, catalog.max_file_bytes)


def _adhoc_source(path: Path) -> SourceSettings:
    name = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in path.resolve().name) or "images"
    return SourceSettings(name=name, path=path)


def backfill_step(
    settings: Settings,
    *,
    model: str | None = None,
    shards: list[str] | None = None,
    progress: bool = True,
) -> BackfillReport:
    """Embed the catalog images of `shards` (default: all) that `model` has not embedded yet.

    Not recorded on its own: the index step records the embeddings together with the index built on them.
    """
    pinned = pin_reference(model or settings.embeddings.model, settings)
    encoder = load_encoder(pinned, settings)
    return backfill(
        encoder,
        read_catalog(settings.catalog_path),
        settings.embeddings_dir / model_key(pinned),
        shards=shards or SHARD_KEYS,
        batch_size=settings.embeddings.batch_size,
        workers=settings.embeddings.workers,
        dtype=settings.embeddings.dtype,
        limits=decode_limits(settings),
        progress=progress,
    )


@dataclass(frozen=True, slots=True)
class IndexStepResult:
    manifest: IndexManifest
    version: StageVersion | None


def index_step(settings: Settings, *, model: str | None = None, record: bool = True) -> IndexStepResult:
    """Index every catalog image's embedding by `model`; version embeddings + index with DVC."""
    pinned = pin_reference(model or settings.embeddings.model, settings)
    catalog = read_catalog(settings.catalog_path)
    vectors, missing = read_model_embeddings(settings.embeddings_dir / model_key(pinned), catalog["id"])
    if len(missing):
        shards = sorted(set(missing.str[0]))
        raise ValueError(
            f"{len(missing)} of {len(catalog)} catalog images have no embedding by {pinned} "
            f"(shards {','.join(shards)}): run `imagesearch embeddings backfill` first"
        )
    repo = init_workspace(settings) if record else None
    catalog_version = repo.current(CATALOG_STAGE).outputs if repo else {}
    manifest = build_tuned_index(
        vectors,
        catalog[["id", "path"]].reset_index(drop=True),
        settings.search_index_dir,
        model=pinned,
        config=settings.index,
        extra={"catalog_dvc_md5": catalog_version.get("data/catalog/catalog.parquet", "unrecorded")},
    )
    message = f"index: {manifest.count} vectors of {pinned}, {manifest.factory}"
    version = repo.record([EMBEDDINGS_STAGE, INDEX_STAGE], message) if repo else None
    return IndexStepResult(manifest, version)
