"""The index step: what `imagesearch index from-catalog`, the DVC stage `index` and the asset
`search_index` call: every catalog image's embedding, indexed, tuned, and versioned with DVC.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.step import CATALOG_STAGE
from imagesearch.common.versioning import StageVersion
from imagesearch.common.workspace import init_workspace, one_writer
from imagesearch.embeddings.step import EMBEDDINGS_STAGE
from imagesearch.embeddings.store import model_key, read_model_embeddings
from imagesearch.index.build import build_tuned_index
from imagesearch.index.store import IndexManifest
from imagesearch.models.registry import pin_reference
from imagesearch.settings import Settings

INDEX_STAGE = "index"


@dataclass(frozen=True, slots=True)
class IndexStepResult:
    manifest: IndexManifest
    version: StageVersion | None


@one_writer("index")
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
