"""What the pipeline's sensors look at, without any orchestration: new files, unembedded shards.

Each answer is cheap (a stat walk, parquet id columns), so a sensor can ask every few minutes.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.sources import scan_source
from imagesearch.embeddings.store import model_key, shard_of
from imagesearch.models.registry import pin_reference
from imagesearch.settings import Settings

KEY = ["source", "relpath", "size_bytes", "mtime_ns"]


def uncatalogued_files(settings: Settings) -> list[str]:
    """Source files (source/relpath) the catalog and quarantine have not seen with this size and mtime."""
    seen = pd.concat(
        [
            pd.read_parquet(path, columns=KEY)
            for path in (settings.catalog_path, settings.quarantine_path)
            if path.exists()
        ]
        or [pd.DataFrame(columns=KEY)]
    )
    known = set(seen.itertuples(index=False, name=None))
    return [
        f"{file.source}/{file.relpath}"
        for source in settings.effective_sources
        for file in scan_source(source, settings.catalog.extensions)
        if file.key not in known
    ]


def files_fingerprint(files: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()[:16]


def unembedded_shards(settings: Settings, model: str | None = None) -> list[str]:
    """Catalog shards holding images the model's embedding folder lacks (all shards for a new model)."""
    if not settings.catalog_path.exists():
        return []
    folder = settings.embeddings_dir / model_key(pin_reference(model or settings.embeddings.model, settings))
    done: set[str] = set()
    for shard in folder.glob("shard-*.parquet"):
        done.update(pd.read_parquet(shard, columns=["id"])["id"])
    missing = read_catalog(settings.catalog_path)["id"]
    return sorted({shard_of(image_id) for image_id in missing[~missing.isin(done)]})
