"""The backfill step: what `imagesearch embeddings backfill`, the DVC stage `embeddings` and the asset
`image_embeddings` call. Not recorded on its own: the index step records embeddings and index together.
"""

from __future__ import annotations

from imagesearch.catalog.build import read_catalog
from imagesearch.common.executor import executor_for
from imagesearch.common.images import decode_limits
from imagesearch.common.progress import Progress
from imagesearch.embeddings.backfill import BackfillReport, backfill
from imagesearch.embeddings.store import SHARD_KEYS, mark_routing, model_key
from imagesearch.models.registry import load_encoder, pin_reference
from imagesearch.settings import Settings

EMBEDDINGS_STAGE = "embeddings"


def backfill_step(
    settings: Settings,
    *,
    model: str | None = None,
    shards: list[str] | None = None,
    progress: Progress = True,
) -> BackfillReport:
    """Embed the catalog images of `shards` (default: all) that `model` has not embedded yet.

    Not recorded on its own: the index step records the embeddings together with the index built on them.
    """
    pinned = pin_reference(model or settings.embeddings.model, settings)
    encoder = load_encoder(pinned, settings)
    folder = settings.embeddings_dir / model_key(pinned)
    if encoder.routes:
        mark_routing(folder, encoder.specialist_columns())
    return backfill(
        encoder,
        read_catalog(settings.catalog_path),
        folder,
        shards=shards or SHARD_KEYS,
        batch_size=settings.embeddings.batch_size,
        executor=executor_for(settings),
        dtype=settings.embeddings.dtype,
        limits=decode_limits(settings.catalog),
        progress=progress,
    )
