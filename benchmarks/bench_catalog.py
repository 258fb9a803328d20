"""Catalog throughput on the default corpus, as ratios against peers measured in the same run.

Peers: a bare Pillow `open().load()` loop (the least any validator must do), and our own inline
(single-process) build. Also the incremental re-run against a full build.

    .venv/bin/python benchmarks/bench_catalog.py [--images N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from imagesearch.catalog.build import build_catalog
from imagesearch.settings import Settings, SourceSettings


def sample_corpus(root: Path, count: int, into: Path) -> SourceSettings:
    files = sorted(p for p in root.rglob("*.png") if not p.is_symlink())[:count]
    for path in files:
        target = into / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return SourceSettings(name="bench", path=into)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    settings = Settings()
    if not settings.default_corpus_root.is_dir():
        raise SystemExit("default corpus missing: run `imagesearch corpus fetch`")

    with tempfile.TemporaryDirectory() as scratch:
        source = sample_corpus(settings.default_corpus_root, args.images, Path(scratch) / "images")
        paths = sorted(source.path.rglob("*.png"))
        n = len(paths)

        def build(workers: int, full: bool = True):
            catalog = settings.catalog.model_copy(update={"workers": workers})
            return build_catalog(
                [source],
                catalog,
                catalog_path=Path(scratch) / "c.parquet",
                quarantine_path=Path(scratch) / "q.parquet",
                full_rescan=full,
                progress=False,
            )

        def bare_pillow():
            for path in paths:
                with Image.open(path) as image:
                    image.load()

        bare = timed(bare_pillow)
        inline = timed(lambda: build(workers=1))
        cores = os.cpu_count() or 1
        parallel = timed(lambda: build(workers=cores))
        incremental = timed(lambda: build(workers=cores, full=False))

    print(f"catalog benchmark: {n} PNGs of the default corpus (openclipart), {cores} cores")
    print(f"{'run':<44}{'seconds':>9}{'img/s':>9}{'ratio':>9}")
    rows = [
        ("bare Pillow open+load, 1 process (peer)", bare, 1.0),
        ("catalog build, 1 process", inline, inline / bare),
        (f"catalog build, {cores} processes", parallel, parallel / bare),
        ("catalog re-run, nothing changed", incremental, incremental / bare),
    ]
    for name, seconds, ratio in rows:
        print(f"{name:<44}{seconds:>9.2f}{n / seconds:>9.0f}{ratio:>8.2f}x")
    print(
        f"parallel speed-up over 1 process: {inline / parallel:.2f}x; "
        f"incremental re-run vs full build: {parallel / incremental:.1f}x faster"
    )


if __name__ == "__main__":
    main()
