"""Catalog building: ids, splits, annotations, incremental re-runs."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from imagesearch.catalog.build import (
    CatalogShrank,
    assign_split,
    build_catalog,
    read_catalog,
    title_from_filename,
)
from imagesearch.catalog.ood_collections import FASHION_QUERIES, _caption, rcc_files, read_manifest
from imagesearch.catalog.sources import SourceError
from imagesearch.catalog.step import catalog_step
from imagesearch.catalog.watch import files_fingerprint, uncatalogued_files, unembedded_shards
from imagesearch.common.io import content_id
from imagesearch.embeddings.step import backfill_step
from imagesearch.evaluation.sets import outside_sets
from imagesearch.settings import CatalogSettings, Settings, SourceSettings
from tests.conftest import TEST_CATALOG, noise_image, write_outside_collection


def build(settings: Settings, **options):
    return build_catalog(
        settings.effective_sources,
        settings.catalog,
        catalog_path=settings.catalog_path,
        quarantine_path=settings.quarantine_path,
        progress=False,
        **options,
    )


@pytest.mark.parametrize(
    ("image_id", "expected"),
    [
        ("00000000" + "0" * 24, "test"),  # position 0.0
        ("19999999" + "0" * 24, "test"),  # just under 0.1
        ("1a000000" + "0" * 24, "val"),  # just over 0.1
        ("33333332" + "0" * 24, "val"),  # just under 0.2
        ("34000000" + "0" * 24, "train"),
        ("ffffffff" + "0" * 24, "train"),
    ],
)
def test_split_is_a_pure_function_of_the_id(image_id, expected):
    assert assign_split(image_id, val_fraction=0.1, test_fraction=0.1) == expected


def test_split_proportions_follow_the_settings():
    ids = [content_id(str(i).encode()) for i in range(20_000)]
    splits = pd.Series([assign_split(i, val_fraction=0.1, test_fraction=0.2) for i in ids]).value_counts(
        normalize=True
    )
    assert splits["test"] == pytest.approx(0.2, abs=0.01)
    assert splits["val"] == pytest.approx(0.1, abs=0.01)


def test_fractions_that_leave_no_training_data_are_refused():
    with pytest.raises(ValueError, match="must be < 1"):
        CatalogSettings(val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize(
    ("relpath", "title"),
    [("animals/red_apple__02.png", "red apple"), ("x/Big-Dog.01.jpg", "big dog"), ("plain.png", "plain")],
)
def test_titles_come_from_file_names(relpath, title):
    assert title_from_filename(relpath) == title


def test_catalog_rows_carry_ids_tags_captions_and_splits(workspace_settings):
    report = build(workspace_settings)
    catalog = pd.read_parquet(workspace_settings.catalog_path).set_index("relpath")
    assert report.catalogued == 6 and report.quarantined == 0
    first = catalog.loc["animals/animals_01.png"]
    assert first["id"] == content_id(Path(first["path"]).read_bytes())
    assert first["caption"] == "a noisy cat"
    assert list(first["tags"]) == ["animals", "cat", "pet"]
    assert first["category"] == "animals"
    assert set(catalog["split"]) <= {"train", "val", "test"}
    assert pd.isna(catalog.loc["tools/tools_04.png", "caption"])


def test_ids_are_stable_across_folders_and_runs(workspace_settings, tmp_path):
    build(workspace_settings)
    first = pd.read_parquet(workspace_settings.catalog_path).set_index("relpath")["id"]
    moved = tmp_path / "moved"
    os.rename(workspace_settings.effective_sources[0].path, moved)
    build(workspace_settings.model_copy(update={"sources": [SourceSettings(name="tiny", path=moved)]}))
    second = pd.read_parquet(workspace_settings.catalog_path).set_index("relpath")["id"]
    pd.testing.assert_series_equal(first.sort_index(), second.sort_index())


def test_rerun_decodes_only_new_files(workspace_settings, tiny_folder):
    assert build(workspace_settings).decoded == 6
    noise_image(99).save(tiny_folder / "tools" / "tools_99.png")
    rerun = build(workspace_settings)
    assert (rerun.decoded, rerun.reused, rerun.catalogued) == (1, 6, 7)


def test_changed_and_removed_files_are_noticed(workspace_settings, tiny_folder):
    build(workspace_settings)
    noise_image(100).save(tiny_folder / "tools" / "tools_04.png")  # same name, new content
    (tiny_folder / "tools" / "tools_05.png").unlink()
    rerun = build(workspace_settings)
    assert (rerun.decoded, rerun.catalogued) == (1, 5)


def test_full_rescan_decodes_everything(workspace_settings):
    build(workspace_settings)
    assert build(workspace_settings, full_rescan=True).decoded == 6


def test_quarantined_files_are_not_decoded_again(workspace_settings, tiny_folder):
    (tiny_folder / "tools" / "broken.png").write_bytes(b"")
    assert build(workspace_settings).quarantined_by_reason == {"empty_file": 1}
    rerun = build(workspace_settings)
    assert (rerun.decoded, rerun.quarantined) == (0, 1)


def test_caption_manifest_overrides_sidecars(workspace_settings, tiny_folder):
    pd.DataFrame(
        {
            "path": ["animals/animals_01.png", "tools/tools_04.png"],
            "caption": ["from manifest", "a saw"],
            "tags": ["wild|striped", "metal"],
        }
    ).to_csv(tiny_folder / "manifest.csv", index=False)
    build(workspace_settings)
    catalog = pd.read_parquet(workspace_settings.catalog_path).set_index("relpath")
    assert catalog.loc["animals/animals_01.png", "caption"] == "from manifest"
    assert list(catalog.loc["animals/animals_01.png", "tags"]) == ["animals", "cat", "pet", "wild", "striped"]
    assert list(catalog.loc["tools/tools_04.png", "tags"]) == ["tools", "metal"]


def test_parquet_manifest_with_list_tags(workspace_settings, tiny_folder):
    manifest = tiny_folder / "labels.parquet"
    pd.DataFrame(
        {"path": ["tools/tools_05.png"], "caption": ["a hammer"], "tags": [["steel", "hand tool"]]}
    ).to_parquet(manifest)
    source = SourceSettings(name="tiny", path=tiny_folder, manifest=manifest)
    build(workspace_settings.model_copy(update={"sources": [source]}))
    row = pd.read_parquet(workspace_settings.catalog_path).set_index("relpath").loc["tools/tools_05.png"]
    assert (row["caption"], list(row["tags"])) == ("a hammer", ["tools", "steel", "hand tool"])


def test_manifest_without_path_column_is_a_clear_error(workspace_settings, tiny_folder):
    pd.DataFrame({"file": ["a.png"]}).to_csv(tiny_folder / "manifest.csv", index=False)
    with pytest.raises(SourceError, match="needs a 'path' column"):
        build(workspace_settings)


def test_missing_source_folder_is_a_clear_error(tmp_path):
    settings = Settings(
        home=tmp_path / "ws",
        sources=[SourceSettings(name="gone", path=tmp_path / "nope")],
        catalog=TEST_CATALOG,
    )
    with pytest.raises(SourceError, match=r"'gone'.*does not exist"):
        build(settings)


def test_parallel_decode_matches_inline_decode(workspace_settings, tiny_folder):
    for seed in range(10, 80):  # above the inline threshold, so the process pool is used
        noise_image(seed, (16, 16)).save(tiny_folder / "tools" / f"many_{seed}.png")
    build(workspace_settings)
    inline = pd.read_parquet(workspace_settings.catalog_path)
    parallel_settings = workspace_settings.model_copy(
        update={"catalog": TEST_CATALOG.model_copy(update={"workers": 2})}
    )
    assert build(parallel_settings, full_rescan=True).decoded == 76
    pd.testing.assert_frame_equal(inline, pd.read_parquet(workspace_settings.catalog_path))


# --- watch: what the sensors look at -----------------------------------------------------------------
def test_watch_lists_new_files_until_they_are_catalogued_then_the_shards_left_to_embed(
    workspace_settings, tiny_folder, saved_encoder
):
    assert len(uncatalogued_files(workspace_settings)) == 6
    catalog_step(workspace_settings, record=False, progress=False)
    assert uncatalogued_files(workspace_settings) == []
    noise_image(77).save(tiny_folder / "tools" / "tools_77.png")
    assert uncatalogued_files(workspace_settings) == ["tiny/tools/tools_77.png"]
    assert files_fingerprint(["b", "a"]) == files_fingerprint(["a", "b"])

    catalog_step(workspace_settings, record=False, progress=False)
    shards = sorted({image_id[0] for image_id in read_catalog(workspace_settings.catalog_path)["id"]})
    model = str(saved_encoder)
    assert unembedded_shards(workspace_settings, model) == shards
    backfill_step(workspace_settings, model=model, shards=shards[:1], progress=False)
    assert unembedded_shards(workspace_settings, model) == shards[1:]


# --- out-of-domain collections -------------------------------------------------------------------
def tiny_rcc(files: dict[str, bytes]) -> bytes:
    """A Qt binary resource bundle (format 1) with one folder 'a' holding `files`, zlib-compressed."""
    names = b""
    offsets = {}
    for name in ["a", *files]:
        offsets[name] = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
    data, nodes = b"", []
    nodes.append(struct.pack(">IHII", 0, 0x02, 1, 1))  # root: one child, node 1
    nodes.append(struct.pack(">IHII", offsets["a"], 0x02, len(files), 2))
    for name, content in files.items():
        packed = struct.pack(">I", len(content)) + zlib.compress(content)
        nodes.append(struct.pack(">IHHHI", offsets[name], 0x01, 0, 0, len(data)))
        data += struct.pack(">I", len(packed)) + packed
    tree = b"".join(nodes)
    header = 20
    return (
        b"qres"
        + struct.pack(">IIII", 1, header, header + len(tree), header + len(tree) + len(data))
        + tree
        + data
        + names
    )


def test_qt_resource_bundles_are_read_file_by_file():
    bundle = tiny_rcc({"one.txt": b"first", "two.webp": b"\x00second" * 50})
    assert dict(rcc_files(bundle)) == {"/a/one.txt": b"first", "/a/two.webp": b"\x00second" * 50}
    with pytest.raises(ValueError, match="not a Qt resource bundle"):
        list(rcc_files(b"nope" + bytes(16)))


def test_picture_names_become_captions():
    assert _caption("screwDriver2") == "screw driver"
    assert _caption("Taj_Mahal") == "taj mahal"


def test_the_fashion_collection_is_a_labelled_folder_split_into_val_and_test(workspace_settings):
    folder = write_outside_collection(workspace_settings, per_class=3)
    manifest = read_manifest(folder)
    assert manifest.groupby("split").size().to_dict() == {"test": 30, "val": 20}  # 2 val per class here
    assert set(manifest["label_text"]) == set(FASHION_QUERIES.values()) and len(FASHION_QUERIES) == 10
    first = manifest.iloc[0]
    with Image.open(folder / first["path"]) as image:
        assert image.size == (28, 28) and image.mode == "L"
    sets = outside_sets(workspace_settings.ood_corpus_dir, ["fashion-mnist"], "test")["fashion-mnist"]
    assert len(sets.corpus) == 30 and set(sets.text_qrels["origin"]) == {"label"}
    with pytest.raises(FileNotFoundError, match="imagesearch corpus fetch"):
        outside_sets(workspace_settings.ood_corpus_dir, ["gcompris"], "test")


def test_a_collection_converted_to_an_older_layout_is_not_complete(workspace_settings):
    """A converter that now writes other rows (fashion's val grew to 500 a class) names a new layout:
    a folder fetched before it is converted again instead of being read with the old rows."""
    from imagesearch.catalog.corpus import COMPLETE_MARKER, is_complete
    from imagesearch.catalog.ood_collections import FASHION_LAYOUT

    folder = write_outside_collection(workspace_settings, per_class=3)
    assert is_complete(folder, FASHION_LAYOUT) and is_complete(folder)
    (folder / COMPLETE_MARKER).write_text("dataset-fashion-mnist_1.0_all.deb\n")  # before layouts
    assert not is_complete(folder, FASHION_LAYOUT) and is_complete(folder)
    (folder / COMPLETE_MARKER).unlink()
    assert not is_complete(folder)


def test_a_rebuild_that_loses_most_of_the_catalog_stops_and_writes_nothing(workspace_settings, tiny_folder):
    build(workspace_settings)
    before = workspace_settings.catalog_path.read_bytes()
    for seed in (4, 5, 6):  # a source half gone, as when a mount is missing
        (tiny_folder / "tools" / f"tools_{seed:02d}.png").unlink()
    with pytest.raises(CatalogShrank, match="from 6 to 3 images"):
        build(workspace_settings)
    assert workspace_settings.catalog_path.read_bytes() == before
    accepting = workspace_settings.model_copy(
        update={"catalog": workspace_settings.catalog.model_copy(update={"max_shrink": 1.0})}
    )
    assert build(accepting).catalogued == 3
