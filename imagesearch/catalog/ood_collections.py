"""Out-of-domain collections: labelled images from outside the training corpus, for evaluation only.

A user's collection is never our training corpus, so the gate also measures models on collections no
training source ever reads. Each is fetched from Debian's archive like the default corpus and written
as a bring-your-own folder: ``<label>/<file>.png`` plus a ``manifest.csv`` with the columns the catalog
reads (``path``, ``caption``, ``tags``) and three more for evaluation:

- ``label``: what image->image relevance is judged by (empty: a distractor, never an image query);
- ``label_text``: the text queries for the label, ``|``-separated (empty: no label query);
- ``split``: ``val`` (model selection during training) or ``test`` (the gate); never mixed.

Collections:
- ``fashion-mnist`` (Debian ``dataset-fashion-mnist``): 28x28 grayscale product photos, 10 classes.
  Test: 100 images per class from the official test file; val: 500 per class from the training file.
- ``gcompris`` (Debian ``gcompris-qt-data``): the labelled pictures of GCompris' word, category and
  exploration activities (tools, fishes, monuments, fruit, animals, body parts...), read out of the Qt
  resource bundles; captions are the pictured word. Split by a hash of the file name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from imagesearch.catalog.corpus import fetch_debian_package

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["path", "caption", "tags", "label", "label_text", "split"]


@dataclass(frozen=True, slots=True)
class Collection:
    name: str
    package: str
    convert: Callable[[Path, Path], None]  # (unpacked package root, staging folder) -> images + manifest
    description: str
    layout: str = ""  # names what `convert` writes: a new one converts existing folders again


def fetch_collection(collection: Collection, root: Path) -> Path:
    """Fetch and convert one collection into ``root/<name>`` unless it is already there."""
    return fetch_debian_package(
        collection.package, root / collection.name, collection.convert, collection.layout
    )


def read_manifest(folder: Path) -> pd.DataFrame:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} is missing: fetch the collection first (imagesearch corpus fetch)"
        )
    return pd.read_csv(manifest, dtype=str, keep_default_na=False)[MANIFEST_COLUMNS]


def _write(staging: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(staging / MANIFEST, index=False)


# --- Fashion-MNIST -------------------------------------------------------------------------------
FASHION_TREE = Path("usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"
)  # fmt: skip
# more than one way to ask for a class: ten queries alone make a noisy metric
FASHION_QUERIES = {
    "t-shirt": "t-shirt|top|tee", "trousers": "trousers|pants|jeans", "pullover": "pullover|sweater|jumper",
    "dress": "dress|a woman's dress", "coat": "coat|jacket", "sandal": "sandal|summer sandals",
    "shirt": "shirt|blouse", "sneaker": "sneaker|running shoe|trainers", "bag": "bag|handbag|purse",
    "ankle boot": "ankle boot|boots",
}  # fmt: skip
# val: 500 a class. With 100, model selection (dozens of epoch x interpolation candidates scored on
# the same rows) kept models whose val number was luck: 0.02-0.06 nDCG@10 lower on the test rows
FASHION_PER_CLASS = {"test": ("t10k", 100), "val": ("train", 500)}
FASHION_LAYOUT = "test 100, val 500 per class"


def _idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian dims after a magic whose last byte is the rank."""
    data = gzip.decompress(path.read_bytes())
    rank = data[3]
    dims = struct.unpack(f">{rank}I", data[4 : 4 + 4 * rank])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(dims)


def convert_fashion_mnist(unpacked: Path, staging: Path) -> None:
    rows = []
    for split, (prefix, per_class) in FASHION_PER_CLASS.items():
        images = _idx(unpacked / FASHION_TREE / f"{prefix}-images-idx3-ubyte.gz")
        labels = _idx(unpacked / FASHION_TREE / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(FASHION_CLASSES):
            folder = name.replace(" ", "_")
            (staging / folder).mkdir(exist_ok=True)
            for index in np.flatnonzero(labels == label)[:per_class]:
                relpath = f"{folder}/{split}_{index:05d}.png"
                Image.fromarray(images[index]).save(staging / relpath)
                rows.append(
                    {"path": relpath, "caption": name, "tags": folder, "label": folder,
                     "label_text": FASHION_QUERIES[name], "split": split}
                )  # fmt: skip
    _write(staging, rows)


# --- GCompris --------------------------------------------------------------------------------------
GCOMPRIS_RCC = Path("usr/share/gcompris-qt/rcc")
ACTIVITIES = "/gcompris/src/activities/"
# resource folder -> (label, label query); label None: distractors only
GCOMPRIS_FOLDERS = {
    "categorization/resource/images/tools": ("tools", "a tool"),
    "categorization/resource/images/fishes": ("fish", "a fish"),
    "categorization/resource/images/monuments": ("monuments", "a famous monument"),
    "categorization/resource/images/renewable": ("renewable", "renewable energy"),
    "categorization/resource/images/others": (None, None),
    "explore_world_animals/resource/animals": ("animal", "an animal"),
    "explore_farm_animals/resource/animals": ("animal", "an animal"),
    "explore_monuments/resource/india": ("monuments", "a famous monument"),
    "explore_monuments/resource/usa": ("monuments", "a famous monument"),
    "explore_monuments/resource/france": ("monuments", "a famous monument"),
    "solar_system/resource": ("planets", "a planet"),
}
WORD_LESSONS = {  # lang activity lesson -> (label, label query)
    "color": ("color", "a colour"),
    "number": ("number", "a number"),
    "bodyparts": ("bodyparts", "a part of the body"),
    "people": ("people", "people"),
    "animal": ("animal", "an animal"),
    "fruit": ("fruit", "a fruit"),
}
RASTER = (".webp", ".png", ".jpg", ".jpeg")


def rcc_files(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every file in a Qt binary resource bundle (.rcc), zlib/zstd entries inflated."""
    magic, version, tree, payload, names = struct.unpack(">4sIIII", data[:20])
    if magic != b"qres":
        raise ValueError("not a Qt resource bundle")
    node_size = 22 if version >= 2 else 14

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset : names + offset + 2])
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        node, prefix = stack.pop()
        at = tree + node * node_size
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        path = f"{prefix}/{name_at(name_offset)}" if node else ""
        if flags & 0x02:  # directory
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            stack.extend((child, path) for child in range(first, first + count))
            continue
        (offset,) = struct.unpack(">I", data[at + 10 : at + 14])
        (size,) = struct.unpack(">I", data[payload + offset : payload + offset + 4])
        blob = data[payload + offset + 4 : payload + offset + 4 + size]
        if flags & 0x01:
            blob = zlib.decompress(blob[4:])
        elif flags & 0x04:
            continue  # zstd entries: none among the pictures used here
        yield path, blob


def _caption(stem: str) -> str:
    """``screwDriver2`` -> ``screw driver``; ``Taj_Mahal`` -> ``taj mahal``."""
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    return re.sub(r"[\d_\-]+", " ", words).strip().lower()


def _split(name: str) -> str:
    return "val" if hashlib.blake2b(name.encode(), digest_size=2).digest()[0] % 3 == 0 else "test"


def convert_gcompris(unpacked: Path, staging: Path) -> None:
    files = {
        path.removeprefix(ACTIVITIES): blob
        for bundle in sorted((unpacked / GCOMPRIS_RCC).glob("*.rcc"))
        for path, blob in rcc_files(bundle.read_bytes())
        if path.startswith(ACTIVITIES)
    }
    pictures = []  # (relative path in the bundle, label, label query, caption)
    for path in sorted(files):
        folder, _, filename = path.rpartition("/")
        if folder in GCOMPRIS_FOLDERS and filename.lower().endswith(RASTER):
            label, label_text = GCOMPRIS_FOLDERS[folder]
            pictures.append((path, label, label_text, _caption(Path(filename).stem)))
    words = json.loads(files["lang/resource/words_sample.json"])
    for chapter in words:
        for lesson in chapter["content"]:
            label, label_text = WORD_LESSONS.get(lesson["name"], (None, None))
            for word in lesson["content"]:
                path = f"lang/resource/words_sample/{word['image']}"
                if path in files:
                    pictures.append((path, label, label_text, word["description"].lower()))
    rows = []
    for path, label, label_text, caption in pictures:
        image = Image.open(io.BytesIO(files[path]))
        if min(image.size) < 32:
            continue  # icons and sprites, not pictures
        folder = label or "other"
        relpath = f"{folder}/{path.replace('/', '_').rsplit('.', 1)[0]}.png"
        (staging / folder).mkdir(exist_ok=True)
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(staging / relpath)
        rows.append(
            {"path": relpath, "caption": caption, "tags": folder, "label": label or "",
             "label_text": label_text or "", "split": _split(relpath)}
        )  # fmt: skip
    _write(staging, rows)


COLLECTIONS = (
    Collection(
        "fashion-mnist",
        "dataset-fashion-mnist",
        convert_fashion_mnist,
        "28x28 grayscale product photos",
        FASHION_LAYOUT,
    ),
    Collection("gcompris", "gcompris-qt-data", convert_gcompris, "labelled pictures of GCompris"),
)


def fetch_collections(names: list[str], root: Path) -> dict[str, Path]:
    """Fetch every named collection missing under `root` (a complete one is left as it is)."""
    known = {collection.name: collection for collection in COLLECTIONS}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown out-of-domain collections {unknown}; known: {sorted(known)}")
    return {name: fetch_collection(known[name], root) for name in names}
