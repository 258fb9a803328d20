"""The index step: what `imagesearch index from-catalog`, the DVC stage `index` and the asset
`search_index` call: every catalog image's embedding, indexed, tuned, and versioned with DVC.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.step import CATALOG_STAGE
from imagesearch.common.executor import executor_for
from imagesearch.common.versioning import StageVersion
from imagesearch.common.workspace import init_workspace, one_writer
from imagesearch.embeddings.step import EMBEDDINGS_STAGE
from imagesearch.embeddings.store import model_key, read_model_embeddings, shard_of
from imagesearch.index.build import build_tuned_index
from imagesearch.index.pieces import piece_bounds
from imagesearch.index.store import IndexManifest, load_index
from imagesearch.models.registry import pin_reference
from imagesearch.settings import Settings

INDEX_STAGE = "index"


@dataclass(frozen=True, slots=True)
class IndexStepResult:
    manifest: IndexManifest
    version: StageVersion | None


class UnsoundIndex(ValueError):
    """A new index that must not be served: the served one stays."""


def index_problems(folder: Path, catalog_ids: set[str], floor: float) -> list[str]:
    """What is wrong with the index in `folder` for this catalog: coverage and tuned recall."""
    loaded = load_index(folder)
    index_ids = set(loaded.ids["id"])
    problems = []
    if loaded.ntotal != len(catalog_ids) or index_ids != catalog_ids:
        problems.append(
            f"{loaded.ntotal} vectors for {len(catalog_ids)} catalog images "
            f"({len(catalog_ids - index_ids)} missing, {len(index_ids - catalog_ids)} not in the catalog)"
        )
    if loaded.manifest.recall_at_10 < floor:
        problems.append(f"tuned recall@10 {loaded.manifest.recall_at_10:.3f} is below the floor {floor}")
    return problems


def refuse_unsound_index(staging: Path, *, catalog_ids: set[str], floor: float) -> None:
    """Run before publication: a new index with problems is never swapped in."""
    problems = index_problems(staging, catalog_ids, floor)
    if problems:
        raise UnsoundIndex("the new index was not published: " + "; ".join(problems))


@one_writer("index")
def index_step(settings: Settings, *, model: str | None = None, record: bool = True) -> IndexStepResult:
    """Index every catalog image's embedding by `model`; version embeddings + index with DVC."""
    pinned = pin_reference(model or settings.embeddings.model, settings)
    # Sorted by id, hence by shard: each embedding partition is one contiguous piece of the index.
    catalog = read_catalog(settings.catalog_path).sort_values("id", ignore_index=True)
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
        check=partial(
            refuse_unsound_index, catalog_ids=set(catalog["id"]), floor=settings.index.recall_floor
        ),
        executor=executor_for(settings),
        bounds=piece_bounds(catalog["id"].map(shard_of).tolist()),
        shards=settings.cluster.index_shards,
    )
    message = f"index: {manifest.count} vectors of {pinned}, {manifest.factory}"
    version = repo.record([EMBEDDINGS_STAGE, INDEX_STAGE], message) if repo else None
    return IndexStepResult(manifest, version)
