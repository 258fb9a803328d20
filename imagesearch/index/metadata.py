"""What an index knows of each image besides its vector: the columns that filters, facets, keyword
search and date sort read (kept in the index's ids table), and the row masks a filter selects.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from imagesearch.catalog.build import title_from_filename

# `added_ns` is the catalog's time of the file (its modification time when catalogued)
METADATA_COLUMNS = ["source", "category", "tags", "title", "caption", "added_ns", "width", "height"]
WORD = re.compile(r"[^\W_]+")


def catalog_metadata(catalog: pd.DataFrame) -> pd.DataFrame:
    """The ids table of a catalog index: id, path and the metadata columns."""
    frame = catalog[["id", "path", "source", "category", "tags", "title", "caption"]].copy()
    frame["added_ns"] = catalog["mtime_ns"].astype("int64")
    frame["width"], frame["height"] = catalog["width"].astype("int64"), catalog["height"].astype("int64")
    return frame.reset_index(drop=True)


def folder_metadata(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The ids table of a bring-your-own folder: the sub-folder is the category, the file name the
    title, the folder's name the source; sizes come from the image headers."""
    paths = [Path(p) for p in frame["path"]]
    sizes = [_header_size(path) for path in paths]
    folders = [path.parent.relative_to(root).as_posix() for path in paths]
    return frame[["id", "path"]].assign(
        source=root.name,
        category=[folder if folder != "." else "" for folder in folders],
        tags=[[] for _ in paths],
        title=[title_from_filename(path.name) for path in paths],
        caption=None,
        added_ns=[path.stat().st_mtime_ns for path in paths],
        width=[w for w, _ in sizes],
        height=[h for _, h in sizes],
    )


def _header_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # reads the header only
        return image.size


def with_metadata_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """An ids table from before metadata was kept (id, path only): empty metadata, same rows."""
    missing = {name: None for name in METADATA_COLUMNS if name not in frame.columns}
    if "tags" in missing:
        missing["tags"] = [()] * len(frame)  # one shared empty tuple: no object per row
    return frame.assign(**missing) if missing else frame


@dataclass(frozen=True, slots=True)
class Filters:
    """Which images a query may return; an empty field does not filter."""

    categories: tuple[str, ...] = ()  # any of
    tags: tuple[str, ...] = ()
    all_tags: bool = False  # every tag in `tags`, else any of them
    sources: tuple[str, ...] = ()
    added_after_ns: int | None = None
    added_before_ns: int | None = None
    min_width: int | None = None
    min_height: int | None = None

    @property
    def active(self) -> bool:
        return self != Filters(all_tags=self.all_tags)


class RowMetadata:
    """Per-row arrays and value -> rows lookups, built once per loaded index: a filter's mask costs
    the rows it matches, not a walk over Python objects per query."""

    def __init__(self, frame: pd.DataFrame) -> None:
        frame = with_metadata_columns(frame)
        self.count = len(frame)
        self.category = frame["category"].fillna("").astype(str).to_numpy()
        self.source = frame["source"].fillna("").astype(str).to_numpy()
        self.tags = [tuple(t) if t is not None and len(t) else () for t in frame["tags"]]
        self.title = frame["title"].fillna("").astype(str).to_numpy()
        self.caption = frame["caption"].fillna("").astype(str).to_numpy()
        self.added_ns = pd.to_numeric(frame["added_ns"]).fillna(0).to_numpy(np.int64)
        self.width = pd.to_numeric(frame["width"]).fillna(0).to_numpy(np.int64)
        self.height = pd.to_numeric(frame["height"]).fillna(0).to_numpy(np.int64)
        self.rows_by = {
            "category": _rows_by_value(self.category),
            "source": _rows_by_value(self.source),
            "tags": _rows_by_tag(self.tags),
        }

    def mask(self, filters: Filters) -> np.ndarray:
        """True for the rows `filters` keep."""
        keep = np.ones(self.count, dtype=bool)
        for field, values in (("category", filters.categories), ("source", filters.sources)):
            if values:
                keep &= self._any_of(field, values)
        if filters.tags:
            sets = [self._any_of("tags", (tag,)) for tag in filters.tags]
            keep &= np.logical_and.reduce(sets) if filters.all_tags else np.logical_or.reduce(sets)
        bounds = (
            (self.added_ns, filters.added_after_ns, np.greater_equal),
            (self.added_ns, filters.added_before_ns, np.less),
            (self.width, filters.min_width, np.greater_equal),
            (self.height, filters.min_height, np.greater_equal),
        )
        for values, bound, compare in bounds:
            if bound is not None:
                keep &= compare(values, bound)
        return keep

    def _any_of(self, field: str, values: tuple[str, ...]) -> np.ndarray:
        found = np.zeros(self.count, dtype=bool)
        for value in values:
            found[self.rows_by[field].get(value, [])] = True
        return found

    def facets(self, rows: np.ndarray, top: int = 10) -> dict[str, dict[str, int]]:
        """Counts of each category, tag and source among `rows` (the most common `top` of each)."""
        counts = {
            "category": Counter(self.category[rows]),
            "source": Counter(self.source[rows]),
            "tags": Counter(tag for row in rows for tag in self.tags[row]),
        }
        return {
            field: dict(counter.most_common(top))
            for field, counter in counts.items()
            if counter.keys() - {""}
        }

    def words(self, row: int) -> set[str]:
        """The lower-case words of a row's title, tags, caption and category (for explanations)."""
        text = " ".join([self.title[row], " ".join(self.tags[row]), self.caption[row], self.category[row]])
        return set(words_of(text))


def words_of(text: str) -> list[str]:
    """Lower-case word tokens, separators (_ - /) split: what keyword search and explanations match."""
    return WORD.findall(text.lower())


def _rows_by_value(values: np.ndarray) -> dict[str, np.ndarray]:
    return {str(value): rows for value, rows in pd.Series(values).groupby(values).indices.items()}


def _rows_by_tag(tags: list[list[str]]) -> dict[str, np.ndarray]:
    exploded = pd.Series(tags, dtype=object).explode().dropna()
    if exploded.empty:
        return {}
    return {
        str(tag): np.asarray(rows, dtype=np.int64)
        for tag, rows in exploded.index.to_series().groupby(exploded.to_numpy()).agg(list).items()
    }
