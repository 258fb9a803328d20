"""Common: the one decode path against the bad-image zoo (every awkward file the catalog must handle,
generated here for real), and real DVC + git versioning in a temporary workspace."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imagesearch.catalog.build import build_catalog
from imagesearch.catalog.step import CATALOG_STAGE, catalog_step
from imagesearch.common.images import DecodeLimits, ImageRejected, RejectReason, open_rgb
from imagesearch.common.versioning import VersioningError
from imagesearch.common.workspace import data_repo, init_workspace
from imagesearch.settings import Settings, SourceSettings
from tests.conftest import TEST_CATALOG, noise_image, png_bytes

# --- images --------------------------------------------------------------------------------
LIMITS = DecodeLimits(TEST_CATALOG.max_image_pixels, TEST_CATALOG.min_side, TEST_CATALOG.max_file_bytes)


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a 40x20 stored image shows as 20x40
    return jpeg_bytes(noise_image(11, (40, 20)), exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def corrupt_png() -> bytes:
    data = bytearray(png_bytes(noise_image(12)))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 60] = b"\x00" * 20  # damaged compressed stream, CRC no longer matches
    return bytes(data)


def palette_with_transparency() -> bytes:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 8, 16))
    return png_bytes(image, transparency=0)


ZOO_GOOD = {
    "good/rgb.png": lambda: png_bytes(noise_image(1)),
    "modes/palette_transparent.png": palette_with_transparency,
    "modes/rgba.png": lambda: png_bytes(noise_image(2, mode="RGBA")),
    "modes/la.png": lambda: png_bytes(noise_image(3, mode="L").convert("LA")),
    "modes/cmyk.jpg": lambda: jpeg_bytes(noise_image(4).convert("CMYK")),
    "modes/sixteen_bit.png": lambda: png_bytes(Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))),
    "modes/animated.gif": animated_gif,
    "modes/exif_rotated.jpg": exif_rotated_jpeg,
}
ZOO_BAD = {
    "bad/empty.png": (lambda: b"", RejectReason.EMPTY_FILE),
    "bad/not_an_image.jpg": (lambda: b"this is a text file, not a picture\n" * 20, RejectReason.NOT_AN_IMAGE),
    "bad/truncated.png": (lambda: png_bytes(noise_image(5))[:3000], RejectReason.TRUNCATED),
    "bad/corrupt.png": (corrupt_png, RejectReason.CORRUPT),
    "bad/bomb.png": (lambda: png_bytes(Image.new("1", (2000, 2000))), RejectReason.DECOMPRESSION_BOMB),
    "bad/tiny.png": (lambda: png_bytes(noise_image(6, (4, 4))), RejectReason.TOO_SMALL),
    "more/rgb_copy.png": (lambda: png_bytes(noise_image(1)), RejectReason.DUPLICATE),
}


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    root = tmp_path / "zoo"
    for relpath, make in ZOO_GOOD.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(make())
    for relpath, (make, _) in ZOO_BAD.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(make())
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes(noise_image(7)))
    os.symlink(outside, root / "bad" / "escaping_link.png")
    return root


@pytest.fixture
def zoo_tables(zoo: Path, tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    build_catalog(
        [SourceSettings(name="zoo", path=zoo)],
        TEST_CATALOG,
        catalog_path=tmp_path / "c.parquet",
        quarantine_path=tmp_path / "q.parquet",
        progress=False,
    )
    return pd.read_parquet(tmp_path / "c.parquet"), pd.read_parquet(tmp_path / "q.parquet")


def test_every_good_file_is_catalogued(zoo_tables):
    catalog, _ = zoo_tables
    assert sorted(catalog["relpath"]) == sorted(ZOO_GOOD)


@pytest.mark.parametrize("relpath", sorted(ZOO_BAD))
def test_every_bad_file_is_quarantined_with_its_reason(zoo_tables, relpath):
    _, quarantine = zoo_tables
    row = quarantine.set_index("relpath").loc[relpath]
    assert row["reason"] == ZOO_BAD[relpath][1], row["detail"]
    assert row["detail"]


def test_symlink_leaving_the_source_is_quarantined(zoo_tables):
    _, quarantine = zoo_tables
    assert (
        quarantine.set_index("relpath").loc["bad/escaping_link.png", "reason"] == RejectReason.OUTSIDE_SOURCE
    )


def test_duplicate_points_at_the_kept_image_and_adds_its_tags(zoo_tables):
    catalog, quarantine = zoo_tables
    kept = catalog.set_index("relpath").loc["good/rgb.png"]
    duplicate = quarantine.set_index("relpath").loc["more/rgb_copy.png"]
    assert duplicate["duplicate_of"] == kept["id"]
    assert list(kept["tags"]) == ["good", "more"]


def test_recorded_properties_describe_the_file(zoo_tables):
    catalog = zoo_tables[0].set_index("relpath")
    assert tuple(catalog.loc["modes/exif_rotated.jpg", ["width", "height", "exif_orientation"]]) == (
        20,
        40,
        6,
    )
    assert catalog.loc["modes/animated.gif", "n_frames"] == 3
    assert catalog.loc["modes/cmyk.jpg", "mode"] == "CMYK"
    assert catalog.loc["modes/sixteen_bit.png", "mode"].startswith("I")
    assert bool(catalog.loc["modes/rgba.png", "has_alpha"]) and bool(catalog.loc["modes/la.png", "has_alpha"])
    assert bool(catalog.loc["modes/palette_transparent.png", "has_alpha"])
    assert catalog.loc["good/rgb.png", "category"] == "good"


def test_transparency_is_composited_onto_white():
    decoded = open_rgb(palette_with_transparency(), LIMITS)
    assert decoded.rgb.mode == "RGB"
    assert decoded.rgb.getpixel((2, 2)) == (255, 0, 0)  # opaque palette entry
    assert decoded.rgb.getpixel((12, 2)) == (255, 255, 255)  # transparent entry -> white


def test_sixteen_bit_is_scaled_not_clipped():
    decoded = open_rgb(png_bytes(Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))), LIMITS)
    assert decoded.rgb.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257, where clipping would give 255


def test_animated_image_uses_first_frame():
    assert open_rgb(animated_gif(), LIMITS).rgb.getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    assert open_rgb(exif_rotated_jpeg(), LIMITS).rgb.size == (20, 40)


def test_default_limit_rejects_a_bomb_before_decoding_it():
    header_only = png_bytes(Image.new("1", (10_000, 10_000)))  # 100 Mpx in a few kB
    with pytest.raises(ImageRejected) as caught:
        open_rgb(header_only, DecodeLimits())
    assert caught.value.reason == RejectReason.DECOMPRESSION_BOMB
    assert "limit 64000000" in caught.value.detail


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageRejected) as caught:
        open_rgb(tmp_path / "nope.png", LIMITS)
    assert caught.value.reason == RejectReason.UNREADABLE


def test_a_real_photo_decodes(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path / "coffee.jpg"
    Image.fromarray(skimage_data.coffee()).save(path)
    assert open_rgb(path, DecodeLimits()).rgb.size == (600, 400)


def test_a_second_source_of_copies_adds_only_duplicates(zoo: Path, tmp_path: Path):
    shutil.copytree(zoo, tmp_path / "zoo2", symlinks=True)
    report = build_catalog(
        [SourceSettings(name="a", path=zoo), SourceSettings(name="b", path=tmp_path / "zoo2")],
        TEST_CATALOG,
        catalog_path=tmp_path / "c2.parquet",
        quarantine_path=tmp_path / "q2.parquet",
        progress=False,
    )
    assert report.catalogued == len(ZOO_GOOD)  # the second source only holds copies
    assert (
        report.quarantined_by_reason[RejectReason.DUPLICATE] == len(ZOO_GOOD) + 2
    )  # its copies + both rgb_copy files


# --- versioning --------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("dvc_available")


def test_init_is_idempotent(workspace_settings):
    init_workspace(workspace_settings)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workspace_settings.home, capture_output=True, text=True
    )
    init_workspace(workspace_settings)
    again = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workspace_settings.home, capture_output=True, text=True
    )
    assert head.stdout == again.stdout
    assert (workspace_settings.home / "dvc.yaml").resolve().name == "dvc.yaml"
    assert (workspace_settings.dagster_home / "dagster.yaml").exists()


def test_catalog_versions_are_recorded_pushed_and_restorable(workspace_settings, tiny_folder):
    first = catalog_step(workspace_settings, progress=False)
    noise_image(77).save(tiny_folder / "tools" / "tools_77.png")
    second = catalog_step(workspace_settings, progress=False)
    assert first.version.outputs != second.version.outputs
    assert len(pd.read_parquet(workspace_settings.catalog_path)) == 7

    repo = data_repo(workspace_settings)
    history = repo.history(CATALOG_STAGE)
    assert [v.commit for v in history[:2]] == [second.version.commit, first.version.commit]
    md5 = first.version.outputs["data/catalog/catalog.parquet"]
    assert (workspace_settings.dvc_remote_dir / "files" / "md5" / md5[:2] / md5[2:]).exists()  # pushed

    restored = repo.restore(CATALOG_STAGE, first.version.commit)
    assert restored.outputs == first.version.outputs
    assert len(pd.read_parquet(workspace_settings.catalog_path)) == 6


def test_unchanged_rerun_adds_no_version(workspace_settings):
    first = catalog_step(workspace_settings, progress=False)
    second = catalog_step(workspace_settings, progress=False)
    assert second.version.commit == first.version.commit


def test_dvc_status_is_clean_after_recording(workspace_settings):
    catalog_step(workspace_settings, progress=False)
    status = dvc_status(workspace_settings, CATALOG_STAGE)
    assert "up to date" in status.lower() or status.strip() == "", status


def dvc_status(settings: Settings, stage: str) -> str:
    status = subprocess.run(
        [str(settings.dvc_command), "status", stage],
        cwd=settings.home,
        capture_output=True,
        text=True,
        env={"IMAGESEARCH_HOME": str(settings.home), "PATH": "/usr/bin:/bin"},
    )
    assert status.returncode == 0, status.stderr
    return status.stdout


def test_a_changed_outside_collection_makes_the_eval_sets_stage_stale(workspace_settings):
    """The stages that read the out-of-domain collections (eval_sets: their test rows; train: their
    val rows) list them: `dvc repro` reruns them when a collection changes, not only the catalog."""
    from imagesearch.evaluation.step import EVAL_SETS_STAGE, eval_sets_step
    from imagesearch.training_data.step import source_step
    from tests.conftest import write_outside_collection

    catalog_step(workspace_settings, progress=False)
    source_step(workspace_settings, "judgments", progress=False)  # writes the held-out qrels it reads
    eval_sets_step(workspace_settings)  # none configured: the folder is made, empty, and hashed
    assert "corpus/ood" not in dvc_status(workspace_settings, EVAL_SETS_STAGE)
    write_outside_collection(workspace_settings, per_class=1)
    assert "corpus/ood" in dvc_status(workspace_settings, EVAL_SETS_STAGE)


def test_restoring_an_unknown_revision_is_a_clear_error(workspace_settings):
    catalog_step(workspace_settings, progress=False)
    with pytest.raises(VersioningError):
        data_repo(workspace_settings).restore(CATALOG_STAGE, "0123456789abcdef")


def test_progress_for_a_run_log_is_plain_lines_with_counts_and_rate():
    from imagesearch.common.progress import progress_bar

    lines: list[str] = []
    bar = progress_bar(lines.append, total=40, desc="embedding", unit="img")
    for _ in range(4):
        bar.update(10)
    bar.close()
    assert lines, "a finished bar reports at least once"
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert "embedding" in lines[-1] and "40/40" in lines[-1] and "img/s" in lines[-1]
    assert len(lines) <= 3  # throttled: not one line per update
    silent = progress_bar(False, total=5, desc="x", unit="img")
    assert silent.disable
