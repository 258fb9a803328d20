"""The installed `imagesearch` console script, run as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CLI = shutil.which("imagesearch", path=str(Path(sys.executable).parent))


def run_cli(*args: str, home: Path, sources: list[dict] | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"IMAGESEARCH_HOME": str(home), "IMAGESEARCH_CATALOG__WORKERS": "1"}
    if sources is not None:
        env["IMAGESEARCH_SOURCES"] = json.dumps(sources)
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.usefixtures("dvc_available")
def test_catalog_build_and_summary(tmp_path, tiny_folder):
    home = tmp_path / "ws"
    built = run_cli(
        "catalog", "build", "--json", home=home, sources=[{"name": "t", "path": str(tiny_folder)}]
    )
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout)
    assert report["catalogued"] == 6 and len(report["version_commit"]) == 40
    summary = run_cli("catalog", "summary", "--json", home=home)
    assert json.loads(summary.stdout)["catalogued"] == 6
    versions = run_cli("versions", "list", "catalog", home=home)
    assert report["version_commit"][:10] in versions.stdout


def test_missing_source_is_one_clear_line(tmp_path):
    result = run_cli(
        "catalog", "build", home=tmp_path / "ws", sources=[{"name": "x", "path": str(tmp_path / "no")}]
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_summary_without_catalog_says_how_to_build_it(tmp_path):
    result = run_cli("catalog", "summary", home=tmp_path / "ws")
    assert result.returncode == 2 and "imagesearch catalog build" in result.stderr


def test_doctor_reports_settings_versions_and_missing(tmp_path):
    result = run_cli("doctor", "--json", home=tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["home"] == str((tmp_path / "ws").resolve())
    assert report["versions"]["torch"] == "2.14.1"
    assert any("imagesearch init" in item for item in report["missing"])
    assert "torch_cuda" in report["gpu"]


def test_embed_images_and_texts_with_a_saved_encoder(tmp_path, tiny_folder, saved_encoder, zeroshot_encoder):
    from imagesearch.embeddings.store import read_embeddings

    folder = saved_encoder
    (tiny_folder / "tools" / "broken.png").write_bytes(b"")
    images = run_cli(
        "embed",
        "--images",
        str(tiny_folder),
        "--out",
        str(tmp_path / "i.parquet"),
        "--model",
        str(folder),
        home=tmp_path / "ws",
    )
    assert images.returncode == 0, images.stderr
    assert "1 files rejected" in images.stdout
    frame, matrix = read_embeddings(tmp_path / "i.parquet")
    assert matrix.shape == (6, 384) and frame["id"].str.len().eq(32).all()
    texts = run_cli(
        "embed",
        "--text",
        "a cat",
        "--text",
        "a saw",
        "--out",
        str(tmp_path / "t.parquet"),
        "--model",
        str(folder),
        home=tmp_path / "ws",
    )
    assert texts.returncode == 0, texts.stderr
    frame, matrix = read_embeddings(tmp_path / "t.parquet")
    np.testing.assert_allclose(matrix, zeroshot_encoder.encode_texts(["a cat", "a saw"]), atol=1e-6)


def test_embed_without_a_champion_says_how_to_get_one(tmp_path):
    result = run_cli("embed", "--text", "x", "--out", str(tmp_path / "t.parquet"), home=tmp_path / "ws")
    assert result.returncode == 2 and "register-v0" in result.stderr


def test_index_build_and_batch_search_find_the_query_image_first(tmp_path, tiny_folder, saved_encoder):
    folder = saved_encoder
    index = tmp_path / "index"
    built = run_cli(
        "index",
        "build",
        "--images",
        str(tiny_folder),
        "--out",
        str(index),
        "--model",
        str(folder),
        home=tmp_path / "ws",
    )
    assert built.returncode == 0, built.stderr
    assert json.loads((index / "manifest.json").read_text())["count"] == 6
    images = sorted(tiny_folder.rglob("*.png"))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join([json.dumps({"image": str(p)}) for p in images[:3]] + ['{"text": "a cat"}']))
    searched = run_cli(
        "search", "--index", str(index), "--queries", str(queries), "-k", "3", home=tmp_path / "ws"
    )
    assert searched.returncode == 0, searched.stderr
    lines = [json.loads(line) for line in searched.stdout.splitlines()]
    assert len(lines) == 4
    for query, line in zip(images[:3], lines, strict=False):
        assert line["results"][0]["path"] == str(query)
        assert line["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert len(lines[3]["results"]) == 3 and set(lines[3]["results"][0]) == {"id", "path", "score"}


def test_search_rejects_a_bad_query_line_clearly(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"text": "ok"}\n{"colour": "red"}\n')
    (tmp_path / "index").mkdir()
    result = run_cli(
        "search", "--index", str(tmp_path / "index"), "--queries", str(queries), home=tmp_path / "ws"
    )
    assert result.returncode == 2
    assert "q.jsonl:2: expected" in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m_reaches_every_command():
    """`python -m imagesearch.cli` once stopped at the commands defined before its __main__ guard."""
    for command in (["train", "--help"], ["evaluate", "promote", "--help"], ["serve", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "imagesearch.cli", *command], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert "No such command" not in done.stdout + done.stderr


@pytest.mark.usefixtures("dvc_available")
def test_an_anchored_model_indexes_an_outside_collection_folder(tmp_path):
    """The bring-your-own path with the default trained head (image vectors carry the raw-feature
    block, texts are zero-padded) on a folder laid out like the out-of-domain collections."""
    from imagesearch.models.builders import build_trained_encoder
    from imagesearch.settings import ModelSettings, Settings
    from tests.conftest import write_outside_collection

    model = build_trained_encoder(ModelSettings()).save(tmp_path / "anchored")
    folder = write_outside_collection(Settings(home=tmp_path / "ws"), per_class=1)
    index = tmp_path / "index"
    built = run_cli(
        "index",
        "build",
        "--images",
        str(folder),
        "--out",
        str(index),
        "--model",
        str(model),
        home=tmp_path / "ws",
    )
    assert built.returncode == 0, built.stderr
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["count"] == 30 and manifest["dim"] == 384 + 257 + 1280
    image = sorted(folder.rglob("*.png"))[0]
    searched = run_cli(
        "search", "--index", str(index), "--image", str(image), "-k", "3", "--json", home=tmp_path / "ws"
    )
    assert searched.returncode == 0, searched.stderr
    assert json.loads(searched.stdout.splitlines()[0])["results"][0]["path"] == str(image)
    texts = run_cli(
        "search", "--index", str(index), "--text", "a sneaker", "-k", "5", "--json", home=tmp_path / "ws"
    )
    assert texts.returncode == 0, texts.stderr
    assert len(json.loads(texts.stdout.splitlines()[0])["results"]) == 5
