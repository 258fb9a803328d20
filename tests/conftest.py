"""Shared fixtures: small real image folders and an isolated workspace per test."""

from __future__ import annotations

import os

# The network is closed: make the hub clients fail fast instead of waiting on timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Test workspaces have no out-of-domain collection unless a test writes one (write_outside_collection).
os.environ.setdefault("IMAGESEARCH_EVALUATION__OOD_COLLECTIONS", "[]")

import contextlib
import gzip
import io
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dagster_project.resources import ray_cluster_resource
from imagesearch.settings import CatalogSettings, Settings, SourceSettings

# Small limits keep the decompression-bomb case cheap to generate.
TEST_CATALOG = CatalogSettings(max_image_pixels=1_000_000, min_side=8, workers=1)


# The Ray resource as the default settings make it: not connected, so the heavy assets run in process.
IN_PROCESS = ray_cluster_resource(Settings())


def noise_image(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A random picture: distinct seeds give distinct bytes, hence distinct content ids."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """Six good images in two category folders, one with a sidecar caption."""
    root = tmp_path / "images"
    for category, seeds in {"animals": (1, 2, 3), "tools": (4, 5, 6)}.items():
        (root / category).mkdir(parents=True)
        for seed in seeds:
            noise_image(seed).save(root / category / f"{category}_{seed:02d}.png")
    (root / "animals" / "animals_01.txt").write_text("a noisy cat\ntags: Cat, pet\n")
    return root


@pytest.fixture
def training_folder(tmp_path: Path) -> Path:
    return make_training_folder(tmp_path / "images")


def make_training_folder(root: Path) -> Path:
    """30 noise images in three category folders, enough for every split to hold some; one with a caption."""
    for c, category in enumerate(["animals", "tools", "food"]):
        (root / category).mkdir(parents=True)
        for i in range(10):
            noise_image(100 * c + i, size=(48, 40)).save(root / category / f"{category}_{i:02d}.png")
    (root / "animals" / "animals_00.txt").write_text("a noisy cat\n")
    return root


@pytest.fixture
def workspace_settings(tmp_path: Path, tiny_folder: Path) -> Settings:
    return Settings(
        home=tmp_path / "workspace",
        sources=[SourceSettings(name="tiny", path=tiny_folder)],
        catalog=TEST_CATALOG,
    )


@pytest.fixture(scope="session")
def zeroshot_encoder():
    """The v0 encoder, built once per test session (it embeds 3,000 class prompts)."""
    from imagesearch.models.builders import build_zeroshot_encoder
    from imagesearch.settings import ModelSettings

    return build_zeroshot_encoder(ModelSettings())


@pytest.fixture(scope="session")
def dvc_available() -> None:
    if Settings().dvc_command is None or shutil.which("git") is None:
        pytest.fail("DVC (.tools/dvc) and git are required: run `make setup`")


@pytest.fixture(scope="session")
def saved_encoder(zeroshot_encoder, tmp_path_factory) -> Path:
    """The v0 encoder saved as a folder: a model reference that loads in a second, not a minute."""
    return zeroshot_encoder.save(tmp_path_factory.mktemp("encoder") / "v0-saved")


def idx_gz(array: np.ndarray) -> bytes:
    """An array in the IDX format of (Fashion-)MNIST: magic with the rank, big-endian dims, bytes."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_outside_collection(settings: Settings, per_class: int = 3) -> Path:
    """A small 'fashion-mnist' collection in the workspace, through the real converter: 28x28 noise
    images, `per_class` test and 2 val images in each of the 10 classes."""
    from imagesearch.catalog.corpus import COMPLETE_MARKER, marker_text
    from imagesearch.catalog.ood_collections import FASHION_LAYOUT, FASHION_TREE, convert_fashion_mnist

    unpacked = settings.home / "scratch-deb"
    tree = unpacked / FASHION_TREE
    tree.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for prefix, count in (("t10k", per_class), ("train", 2)):
        labels = np.repeat(np.arange(10), count)
        (tree / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_gz(labels))
        images = rng.integers(0, 256, (len(labels), 28, 28))
        (tree / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_gz(images))
    folder = settings.ood_corpus_dir / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    convert_fashion_mnist(unpacked, folder)
    (folder / COMPLETE_MARKER).write_text(marker_text("test", FASHION_LAYOUT))
    shutil.rmtree(unpacked)
    return folder


@contextlib.contextmanager
def served_on_loopback(app) -> Iterator[str]:
    """`app` under a real uvicorn server on a free 127.0.0.1 port; yields its base URL."""
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
