"""The installed `imagesearch` console script, run as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
