"""Build the image catalog: scan sources, decode and validate every image, dedupe, split.

Output is two parquet tables written atomically: the catalog (one row per distinct, usable image)
and the quarantine (one row per rejected file, with its reason). Re-runs are incremental: a file
whose (source, path, size, mtime) is unchanged since the previous catalog is not decoded again."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from imagesearch.catalog.sources import ImageFile, scan_source
from imagesearch.common.images import DecodeLimits, ImageRejected, RejectReason, decode_limits, open_rgb
from imagesearch.common.io import content_id, write_parquet_atomic
from imagesearch.settings import CatalogSettings, SourceSettings

INLINE_DECODE_BELOW = 64  # below this many files a process pool costs more than it saves


CATALOG_COLUMNS = [
    "id",
    "source",
    "relpath",
    "path",
    "size_bytes",
    "mtime_ns",
    "width",
    "height",
    "format",
    "mode",
    "n_frames",
    "has_alpha",
    "exif_orientation",
    "category",
    "tags",
    "caption",
    "title",
    "split",
]


QUARANTINE_COLUMNS = [
    "source",
    "relpath",
    "path",
    "size_bytes",
    "mtime_ns",
    "reason",
    "detail",
    "id",
    "duplicate_of",
    "width",
    "height",
    "format",
    "mode",
    "n_frames",
    "has_alpha",
    "exif_orientation",
]


INSPECTION_FIELDS = ("id", "width", "height", "format", "mode", "n_frames", "has_alpha", "exif_orientation")


@dataclass(frozen=True, slots=True)
class Inspection:
    """What decoding one file told us; `reason` is set when the file is unusable."""

    id: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    n_frames: int | None = None
    has_alpha: bool | None = None
    exif_orientation: int | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class CatalogReport:
    """Counts of one catalog build, for logs, CLI output and asset metadata."""

    catalogued: int
    quarantined: int
    scanned: int
    decoded: int
    reused: int
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def assign_split(image_id: str, *, val_fraction: float, test_fraction: float) -> str:
    """Deterministic train/val/test split from the id alone: stable across runs and machines."""
    position = int(image_id[:8], 16) / 0x1_0000_0000
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def title_from_filename(relpath: str) -> str:
    """A readable title from a file name: ``red_apple__02.png`` -> ``red apple``."""
    stem = Path(relpath).stem
    words = re.sub(r"[_\-.]+", " ", stem)
    return re.sub(r"(\s+\d+)+$", "", words).strip().lower()


def inspect_file(path: str, limits: DecodeLimits) -> Inspection:
    """Hash and fully decode one file. Runs in worker processes, so it takes and returns plain data."""
    try:
        size = os.path.getsize(path)
        if size > limits.max_file_bytes:
            return Inspection(
                reason=RejectReason.TOO_LARGE_FILE, detail=f"{size} bytes > {limits.max_file_bytes}"
            )
        data = Path(path).read_bytes()
    except OSError as error:
        return Inspection(reason=RejectReason.UNREADABLE, detail=str(error))
    image_id = content_id(data) if data else None
    try:
        decoded = open_rgb(data, limits)
    except ImageRejected as rejected:
        return Inspection(id=image_id, reason=rejected.reason, detail=rejected.detail)
    return Inspection(
        id=image_id,
        width=decoded.rgb.width,
        height=decoded.rgb.height,
        format=decoded.format,
        mode=decoded.mode,
        n_frames=decoded.n_frames,
        has_alpha=decoded.has_alpha,
        exif_orientation=decoded.exif_orientation,
    )


def build_catalog(
    sources: Sequence[SourceSettings],
    settings: CatalogSettings,
    *,
    catalog_path: Path,
    quarantine_path: Path,
    full_rescan: bool = False,
    progress: bool = True,
) -> CatalogReport:
    """Catalogue every image of `sources` into `catalog_path`, rejects into `quarantine_path`."""
    if not sources:
        raise ValueError("no image sources configured")
    files = [file for source in sources for file in scan_source(source, settings.extensions)]
    previous = {} if full_rescan else load_previous_inspections(catalog_path, quarantine_path)
    inspections, decoded = _inspect_all(files, previous, settings, progress=progress)
    catalog, quarantine = _assemble(files, inspections, settings)
    _refuse_a_shrink(catalog_path, len(catalog), settings.max_shrink)
    write_parquet_atomic(catalog, catalog_path)
    write_parquet_atomic(quarantine, quarantine_path)
    return CatalogReport(
        catalogued=len(catalog),
        quarantined=len(quarantine),
        scanned=len(files),
        decoded=decoded,
        reused=len(files) - decoded,
        quarantined_by_reason=dict(Counter(quarantine["reason"])),
        splits=dict(Counter(catalog["split"])),
        sources=dict(Counter(catalog["source"])),
    )


class CatalogShrank(ValueError):
    """A rebuild would drop more of the catalog than `catalog.max_shrink` allows."""


def _refuse_a_shrink(catalog_path: Path, count: int, max_shrink: float) -> None:
    if not catalog_path.exists():
        return
    before = pq.ParquetFile(catalog_path).metadata.num_rows
    if before and count < before * (1 - max_shrink):
        raise CatalogShrank(
            f"the catalog would shrink from {before} to {count} images (more than {max_shrink:.0%}); "
            "nothing was written. Is a source folder unmounted or moved? If the images really are gone, "
            "rerun with IMAGESEARCH_CATALOG__MAX_SHRINK=1"
        )


def load_previous_inspections(catalog_path: Path, quarantine_path: Path) -> dict[tuple, Inspection]:
    """Decode results of the previous build, keyed by file identity, for incremental re-runs."""
    previous: dict[tuple, Inspection] = {}
    for path, is_quarantine in ((catalog_path, False), (quarantine_path, True)):
        if not path.exists():
            continue
        for row in pd.read_parquet(path).to_dict("records"):
            key = (row["source"], row["relpath"], int(row["size_bytes"]), int(row["mtime_ns"]))
            fields = {name: _none_if_na(row.get(name)) for name in INSPECTION_FIELDS}
            if is_quarantine and row["reason"] != RejectReason.DUPLICATE:
                fields |= {"reason": row["reason"], "detail": row["detail"]}
            previous[key] = Inspection(**fields)
    return previous


def _none_if_na(value: object) -> object:
    return None if value is None or (not isinstance(value, (list, tuple, str)) and pd.isna(value)) else value


def _inspect_all(
    files: list[ImageFile], previous: dict[tuple, Inspection], settings: CatalogSettings, *, progress: bool
) -> tuple[list[Inspection], int]:
    results: list[Inspection | None] = [previous.get(file.key) for file in files]
    pending = [i for i, (file, result) in enumerate(zip(files, results, strict=True)) if result is None]
    for i in pending:
        if files[i].stat_error:
            results[i] = Inspection(reason=RejectReason.UNREADABLE, detail=files[i].stat_error)
        elif files[i].escapes_source:
            results[i] = Inspection(
                reason=RejectReason.OUTSIDE_SOURCE, detail="symlink points outside the source"
            )
    to_decode = [i for i in pending if results[i] is None]
    limits = decode_limits(settings)
    decoded = _decode_many([str(files[i].path) for i in to_decode], limits, settings, progress=progress)
    for i, inspection in zip(to_decode, decoded, strict=True):
        results[i] = inspection
    return results, len(to_decode)


def _decode_many(
    paths: list[str], limits: DecodeLimits, settings: CatalogSettings, *, progress: bool
) -> Iterable:
    workers = settings.workers or os.cpu_count() or 1
    # Redirected output (Dagster compute logs, CI) gets a line every few seconds, not a redraw storm.
    interval = 0.1 if sys.stderr.isatty() else 5.0
    bar = dict(
        total=len(paths),
        desc="decoding images",
        unit="img",
        mininterval=interval,
        disable=not progress or not paths,
    )
    if workers == 1 or len(paths) < INLINE_DECODE_BELOW:
        return list(tqdm((inspect_file(p, limits) for p in paths), **bar))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(inspect_file, paths, [limits] * len(paths), chunksize=settings.chunk_size)
        return list(tqdm(jobs, **bar))


def _assemble(
    files: list[ImageFile], inspections: list[Inspection], settings: CatalogSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accepted files -> catalog rows (first path of each content hash wins), the rest -> quarantine."""
    kept: dict[str, dict] = {}
    rejected: list[dict] = []
    for file, inspection in zip(files, inspections, strict=True):
        base = {
            "source": file.source,
            "relpath": file.relpath,
            "path": str(file.path),
            "size_bytes": file.size_bytes,
            "mtime_ns": file.mtime_ns,
        }
        measured = {name: getattr(inspection, name) for name in INSPECTION_FIELDS}
        if inspection.reason is not None:
            rejected.append(base | measured | {"reason": str(inspection.reason), "detail": inspection.detail})
        elif inspection.id in kept:
            _merge_duplicate(kept[inspection.id], file)
            detail = f"same content as {kept[inspection.id]['source']}/{kept[inspection.id]['relpath']}"
            rejected.append(
                base
                | measured
                | {"reason": str(RejectReason.DUPLICATE), "detail": detail, "duplicate_of": inspection.id}
            )
        else:
            kept[inspection.id] = base | measured | _describe(file, inspection.id, settings)
    catalog = pd.DataFrame(list(kept.values()), columns=CATALOG_COLUMNS)
    quarantine = pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS)
    return _typed_catalog(catalog), _typed_quarantine(quarantine)


def _describe(file: ImageFile, image_id: str, settings: CatalogSettings) -> dict:
    return {
        "category": file.tags[0] if file.tags else None,
        "tags": list(file.tags),
        "caption": file.caption,
        "title": title_from_filename(file.relpath),
        "split": assign_split(
            image_id, val_fraction=settings.val_fraction, test_fraction=settings.test_fraction
        ),
    }


def _merge_duplicate(kept_row: dict, duplicate: ImageFile) -> None:
    """A copy found elsewhere adds its folder tags and caption to the kept image."""
    kept_row["tags"] = list(dict.fromkeys([*kept_row["tags"], *duplicate.tags]))
    kept_row["caption"] = kept_row["caption"] or duplicate.caption


def _typed_catalog(frame: pd.DataFrame) -> pd.DataFrame:
    ints = {
        "size_bytes": "int64",
        "mtime_ns": "int64",
        "width": "int32",
        "height": "int32",
        "n_frames": "int32",
        "exif_orientation": "int16",
        "has_alpha": "bool",
    }
    strings = ["id", "source", "relpath", "path", "format", "mode", "category", "caption", "title", "split"]
    return frame.astype(ints | {name: "string" for name in strings})


def _typed_quarantine(frame: pd.DataFrame) -> pd.DataFrame:
    ints = {
        "size_bytes": "int64",
        "mtime_ns": "int64",
        "width": "Int32",
        "height": "Int32",
        "n_frames": "Int32",
        "exif_orientation": "Int16",
        "has_alpha": "boolean",
    }
    strings = [c for c in QUARANTINE_COLUMNS if c not in ints]
    return frame.astype(ints | {name: "string" for name in strings})


def read_catalog(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"no catalog at {path}: build it with `imagesearch catalog build`")
    return pd.read_parquet(path)


def summarize_catalog(catalog: pd.DataFrame, quarantine: pd.DataFrame) -> dict:
    """Counts a person checks after a build: images kept and refused (by reason), splits, sources."""
    return {
        "catalogued": len(catalog),
        "quarantined": len(quarantine),
        "quarantined_by_reason": dict(Counter(quarantine["reason"])),
        "splits": dict(Counter(catalog["split"])),
        "sources": dict(Counter(catalog["source"])),
        "categories": len(set(catalog["category"].dropna())),
    }
