"""Find candidate image files in source folders, with their tags and captions.

Tags come from the folder names between the source root and the file; captions and extra tags come
from a sidecar ``<stem>.txt`` beside the image (caption text, plus an optional ``tags: a, b`` line)
or from a manifest (CSV or parquet with columns ``path``, ``caption``, ``tags``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from imagesearch.settings import SourceSettings

MANIFEST_NAMES = ("manifest.parquet", "manifest.csv")
TAG_LINE_PREFIX = "tags:"


@dataclass(frozen=True, slots=True)
class Annotation:
    caption: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageFile:
    """A file found under a source root that has an image extension."""

    source: str
    path: Path
    relpath: str
    size_bytes: int
    mtime_ns: int
    tags: tuple[str, ...] = ()
    caption: str | None = None
    escapes_source: bool = False
    stat_error: str | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str, int, int]:
        """Identity of this file's bytes for incremental re-runs: unchanged key, unchanged content."""
        return (self.source, self.relpath, self.size_bytes, self.mtime_ns)


class SourceError(ValueError):
    """A source folder or manifest that cannot be used."""


def scan_source(source: SourceSettings, extensions: tuple[str, ...]) -> Iterator[ImageFile]:
    """Yield every image-extension file under the source root, sorted by relative path."""
    root = source.path.expanduser()
    if not root.is_dir():
        raise SourceError(f"source {source.name!r}: folder {root} does not exist")
    resolved_root = root.resolve()
    manifest = read_manifest(source)
    wanted = tuple(ext.lower() for ext in extensions)
    for path in sorted(_walk_files(root)):
        if not path.name.lower().endswith(wanted):
            continue
        relpath = path.relative_to(root).as_posix()
        annotation = _merge(read_sidecar(path), manifest.get(relpath))
        yield _stat_file(source.name, path, relpath, resolved_root, annotation)


def _walk_files(root: Path) -> Iterator[Path]:
    # Symlinked *directories* are not followed: that could loop or leave the source.
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(directory) / name


def _stat_file(source: str, path: Path, relpath: str, resolved_root: Path, note: Annotation) -> ImageFile:
    folder_tags = tuple(part.lower() for part in Path(relpath).parts[:-1])
    tags = tuple(dict.fromkeys(folder_tags + note.tags))
    try:
        stat = path.stat()
    except OSError as error:
        return ImageFile(source, path, relpath, 0, 0, tags, note.caption, stat_error=str(error))
    escapes = not path.resolve().is_relative_to(resolved_root)
    return ImageFile(source, path, relpath, stat.st_size, stat.st_mtime_ns, tags, note.caption, escapes)


def read_sidecar(image_path: Path) -> Annotation:
    """Caption and tags from ``<stem>.txt`` beside the image, if present."""
    sidecar = image_path.with_suffix(".txt")
    if not sidecar.is_file():
        return Annotation()
    caption_lines, tags = [], ()
    for line in sidecar.read_text(encoding="utf-8", errors="replace").splitlines():
        stripped = line.strip()
        if stripped.lower().startswith(TAG_LINE_PREFIX):
            tags = split_tags(stripped[len(TAG_LINE_PREFIX) :])
        elif stripped:
            caption_lines.append(stripped)
    return Annotation(caption=" ".join(caption_lines) or None, tags=tags)


def read_manifest(source: SourceSettings) -> dict[str, Annotation]:
    """Annotations keyed by path relative to the source root; empty when there is no manifest."""
    path = source.manifest or next(
        (source.path / n for n in MANIFEST_NAMES if (source.path / n).is_file()), None
    )
    if path is None:
        return {}
    if not path.is_file():
        raise SourceError(f"source {source.name!r}: manifest {path} does not exist")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    if "path" not in frame.columns:
        raise SourceError(f"manifest {path} needs a 'path' column; it has {list(frame.columns)}")
    notes = {}
    for row in frame.to_dict("records"):
        caption = row.get("caption")
        notes[Path(str(row["path"])).as_posix()] = Annotation(
            caption=str(caption).strip() if isinstance(caption, str) and caption.strip() else None,
            tags=split_tags(row.get("tags")),
        )
    return notes


def split_tags(value: object) -> tuple[str, ...]:
    """Tags from a comma/pipe separated string or a list, lower-cased, order kept, no blanks."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ()
    items = [str(v) for v in value] if not isinstance(value, str) else value.replace("|", ",").split(",")
    return tuple(dict.fromkeys(tag.strip().lower() for tag in items if tag.strip()))


def _merge(sidecar: Annotation, manifest: Annotation | None) -> Annotation:
    if manifest is None:
        return sidecar
    return Annotation(
        caption=manifest.caption or sidecar.caption,
        tags=tuple(dict.fromkeys(sidecar.tags + manifest.tags)),
    )
