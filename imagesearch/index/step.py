"""The index step: what `imagesearch index from-catalog`, the DVC stage `index` and the asset
`search_index` call: every catalog image's embedding, indexed, tuned, and versioned with DVC; and the
challenger's own index (asset `challenger_index`), which the service's online experiments use.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.step import CATALOG_STAGE
from imagesearch.common.executor import executor_for
from imagesearch.common.versioning import DataRepo, StageVersion
from imagesearch.common.workspace import init_workspace, one_writer
from imagesearch.embeddings.step import EMBEDDINGS_STAGE, backfill_step
from imagesearch.embeddings.store import model_key, read_model_embeddings, routes, shard_of
from imagesearch.index.build import build_tuned_index
from imagesearch.index.delta import Delta, read_delta, write_delta
from imagesearch.index.metadata import catalog_metadata
from imagesearch.index.pieces import piece_bounds
from imagesearch.index.routing import as_base, route_vectors
from imagesearch.index.store import IDS_FILE, IndexManifest, load_index, read_manifest
from imagesearch.models.registry import CHALLENGER, load_encoder, pin_reference, pinned_alias
from imagesearch.settings import IndexSettings, Settings

INDEX_STAGE = "index"


@dataclass(frozen=True, slots=True)
class IndexStepResult:
    manifest: IndexManifest
    version: StageVersion | None
    delta: dict | None = None  # the live update's manifest when the base was kept

    @property
    def vectors(self) -> int:
        """Images served: the base's, plus the delta's added, less its removed."""
        change = self.delta or {}
        return self.manifest.count + change.get("added", 0) - change.get("removed", 0)


class UnsoundIndex(ValueError):
    """A new index that must not be served: the served one stays."""


def index_problems(folder: Path, catalog_ids: set[str], floor: float) -> list[str]:
    """What is wrong with the index in `folder` for this catalog: coverage and tuned recall."""
    loaded = load_index(folder)
    live = loaded.live_ids
    index_ids = set(live)
    problems = []
    if len(live) != len(catalog_ids) or index_ids != catalog_ids:
        problems.append(
            f"{len(live)} vectors for {len(catalog_ids)} catalog images "
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
def index_step(
    settings: Settings,
    *,
    model: str | None = None,
    record: bool = True,
    full: bool = False,
    folder: Path | None = None,
) -> IndexStepResult:
    """Index every catalog image's embedding by `model`; version embeddings + index with DVC.

    When an index of the same model is served and the catalog changed by less than the delta
    limits, only the change is published (a live update, seconds); else, or with `full`, the
    index is rebuilt, chosen and tuned anew. `folder` (default: the served index) other than the
    served one is not versioned."""
    pinned = pin_reference(model or settings.embeddings.model, settings)
    folder = folder or settings.search_index_dir
    # Sorted by id, hence by shard: each embedding partition is one contiguous piece of the index.
    catalog = read_catalog(settings.catalog_path).sort_values("id", ignore_index=True)
    repo = init_workspace(settings) if record and folder == settings.search_index_dir else None
    change = None if full else plan_live_update(folder, catalog, pinned, settings.index)
    if change is not None:
        return _publish_live_update(settings, change, pinned, repo, folder)
    vectors, routing = _routed(settings, pinned, _embeddings_of(settings, catalog["id"], pinned))
    catalog_version = repo.current(CATALOG_STAGE).outputs if repo else {}
    manifest = build_tuned_index(
        vectors,
        catalog_metadata(catalog),
        folder,
        model=pinned,
        config=settings.index,
        extra={
            "catalog_dvc_md5": catalog_version.get("data/catalog/catalog.parquet", "unrecorded"),
            **routing,
        },
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


def challenger_index_step(settings: Settings) -> IndexStepResult | None:
    """The registry challenger's own index (the catalog embedded by it first), in the challenger
    folder the service's experiments load; None when no challenger is registered."""
    challenger = pinned_alias(settings, CHALLENGER)
    if challenger is None:
        return None
    backfill_step(settings, model=challenger, progress=False)
    return index_step(settings, model=challenger, folder=settings.challenger_index_dir)


@dataclass(frozen=True, slots=True)
class LiveUpdate:
    added: pd.DataFrame  # catalog rows not in the base index
    removed: list[str]  # base ids no longer in the catalog
    base_count: int


def plan_live_update(
    folder: Path, catalog: pd.DataFrame, model: str, config: IndexSettings
) -> LiveUpdate | None:
    """The change to publish as a delta, or None when the base must be (re)built: no base, another
    model's base, or a change past `delta_max_rows` / `delta_max_fraction` of the base."""
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return None
    if manifest.model != model:
        return None
    base_ids = pd.read_parquet(folder / IDS_FILE, columns=["id"])["id"]
    added = catalog[~catalog["id"].isin(base_ids)]
    removed = base_ids[~base_ids.isin(catalog["id"])].tolist()
    changed = len(added) + len(removed)
    if changed > config.delta_max_rows or changed > config.delta_max_fraction * len(base_ids):
        return None
    return LiveUpdate(added, removed, len(base_ids))


def _publish_live_update(
    settings: Settings, change: LiveUpdate, model: str, repo: DataRepo | None, folder: Path
) -> IndexStepResult:
    current = read_delta(folder)
    if _same_change(current, change):  # nothing new: what is served stays, untouched
        unchanged = current.manifest if current else {"added": 0, "removed": 0}
        return IndexStepResult(read_manifest(folder), None, unchanged)
    base = read_manifest(folder).extra
    encoder = load_encoder(model, settings) if base.get("specialist") == "outside" else None
    vectors = as_base(encoder, _embeddings_of(settings, change.added["id"], model), base)
    delta = write_delta(folder, catalog_metadata(change.added), vectors, change.removed, change.base_count)
    message = f"index: live update of {model}, +{delta['added']} -{delta['removed']} since the base"
    version = repo.record([EMBEDDINGS_STAGE, INDEX_STAGE], message) if repo else None
    return IndexStepResult(read_manifest(folder), version, delta)


def _same_change(delta: Delta | None, change: LiveUpdate) -> bool:
    if delta is None:
        return change.added.empty and not change.removed
    return set(delta.added["id"]) == set(change.added["id"]) and set(delta.removed_ids) == set(change.removed)


def _routed(settings: Settings, model: str, vectors: np.ndarray) -> tuple[np.ndarray, dict]:
    """The catalog's vectors as its index holds them, and the manifest's record of the routing."""
    if not routes(settings.embeddings_dir / model_key(model)):
        return vectors, {}
    return route_vectors(load_encoder(model, settings), vectors)


def _embeddings_of(settings: Settings, ids: pd.Series, model: str) -> np.ndarray:
    vectors, missing = read_model_embeddings(settings.embeddings_dir / model_key(model), ids)
    if len(missing):
        shards = sorted(set(missing.str[0]))
        raise ValueError(
            f"{len(missing)} of {len(ids)} catalog images have no embedding by {model} "
            f"(shards {','.join(shards)}): run `imagesearch embeddings backfill` first"
        )
    return vectors
