"""Image collections from Debian's archive, fetched without installing them; the default corpus first.

``apt-get download`` fetches the .deb (no root install, no dpkg database change) and ``dpkg-deb -x``
unpacks it; the PNG tree (category folders, public domain clip art) becomes a workspace source.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from imagesearch.common.io import folder_atomic

OPENCLIPART_PACKAGE = "openclipart-png"
OPENCLIPART_TREE = Path("usr/share/openclipart/png")
COMPLETE_MARKER = ".fetched"


class CorpusFetchError(RuntimeError):
    """The default corpus could not be fetched; the message says what to do."""


def fetch_openclipart(destination: Path, *, package: str = OPENCLIPART_PACKAGE) -> Path:
    """Download and unpack the clip-art corpus into `destination` unless it is already complete."""

    def move_tree(unpacked: Path, staging: Path) -> None:
        tree = unpacked / OPENCLIPART_TREE
        if not tree.is_dir():
            raise CorpusFetchError(f"{package} does not contain {OPENCLIPART_TREE}")
        for child in tree.iterdir():
            shutil.move(str(child), staging / child.name)

    return fetch_debian_package(package, destination, move_tree)


def fetch_debian_package(
    package: str, destination: Path, convert: Callable[[Path, Path], None], layout: str = ""
) -> Path:
    """Download `package`, unpack it, and let `convert(unpacked_root, staging)` fill `destination`.

    Does nothing when `destination` is already complete with this `layout` (the marker's second
    line: a converter that now writes other rows names a new layout, and an older folder is
    converted again). The folder appears whole or not at all: an interrupted fetch leaves no partial
    collection behind.
    """
    if is_complete(destination, layout):
        return destination
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise CorpusFetchError(
                f"`{tool}` not found: fetching {package} needs a Debian/Ubuntu machine; "
                "point IMAGESEARCH_SOURCES at your own image folders instead"
            )
    with tempfile.TemporaryDirectory(prefix="imagesearch-corpus-") as scratch:
        deb = _download(package, Path(scratch))
        unpacked = Path(scratch) / "root"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        with folder_atomic(destination) as staging:
            convert(unpacked, staging)
            (staging / COMPLETE_MARKER).write_text(marker_text(deb.name, layout))
    return destination


def marker_text(package_file: str, layout: str = "") -> str:
    return f"{package_file}\n{layout}\n" if layout else f"{package_file}\n"


def is_complete(destination: Path, layout: str = "") -> bool:
    marker = destination / COMPLETE_MARKER
    if not marker.is_file():
        return False
    lines = marker.read_text().splitlines()
    return not layout or lines[1:2] == [layout]


def _download(package: str, folder: Path) -> Path:
    """`apt-get download`, refreshing the package lists once if the package is unknown."""
    attempt = subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True)
    if attempt.returncode != 0:
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "download", package], cwd=folder)
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if not debs:
        raise CorpusFetchError(f"apt-get download {package} produced no .deb in {folder}")
    return debs[-1]


def _run(command: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise CorpusFetchError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}")
