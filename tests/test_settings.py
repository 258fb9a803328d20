"""Settings: one object, overridable from the environment."""

from __future__ import annotations

from pathlib import Path

from imagesearch.settings import DEFAULT_CORPUS_NAME, Settings


def test_every_state_path_lives_under_home(tmp_path):
    settings = Settings(home=tmp_path)
    for path in (
        settings.data_dir,
        settings.catalog_path,
        settings.dagster_home,
        settings.mlflow_artifacts_dir,
        settings.dvc_cache_dir,
        settings.dvc_remote_dir,
        settings.index_dir,
        settings.corpus_dir,
    ):
        assert path.is_relative_to(tmp_path)
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"


def test_environment_overrides_nested_values(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGESEARCH_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("IMAGESEARCH_CATALOG__WORKERS", "3")
    monkeypatch.setenv("IMAGESEARCH_SOURCES", '[{"name": "mine", "path": "/photos"}]')
    settings = Settings()
    assert settings.home == tmp_path / "elsewhere"
    assert settings.catalog.workers == 3
    assert [(s.name, s.path) for s in settings.effective_sources] == [("mine", Path("/photos"))]


def test_default_source_is_the_fetched_corpus(tmp_path):
    settings = Settings(home=tmp_path)
    assert [s.name for s in settings.effective_sources] == [DEFAULT_CORPUS_NAME]
    assert settings.effective_sources[0].path == tmp_path / "corpus" / DEFAULT_CORPUS_NAME
