"""`make up` for real: supervisord runs the Dagster webserver + daemon, the MLflow UI and the search
service; `@champion` moved through the MLflow server, as its UI does, reaches the service untouched,
while every search keeps being answered; Ctrl-C (SIGINT) stops everything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from imagesearch.catalog.step import catalog_step
from imagesearch.common.supervise import programs
from imagesearch.embeddings.step import backfill_step
from imagesearch.index.step import index_step
from imagesearch.models import registry
from imagesearch.models.encoders import Encoder
from imagesearch.settings import Settings
from tests.test_webserver import free_port

pytestmark = pytest.mark.usefixtures("dvc_available")

START_TIMEOUT_S = 180
SWAP_TIMEOUT_S = 420


@pytest.fixture
def served_workspace(tmp_path: Path, tiny_folder: Path, saved_encoder: Path, monkeypatch) -> Settings:
    """A workspace whose index is built with version 1 (champion); version 2 registered beside it."""
    env = {
        "IMAGESEARCH_HOME": str(tmp_path / "ws"),
        "IMAGESEARCH_SOURCES": json.dumps([{"name": "tiny", "path": str(tiny_folder)}]),
        "IMAGESEARCH_CATALOG__WORKERS": "1",
        "IMAGESEARCH_EMBEDDINGS__MODEL": "champion",
        "IMAGESEARCH_UP__DAGSTER_PORT": str(free_port()),
        "IMAGESEARCH_UP__MLFLOW_PORT": str(free_port()),
        "IMAGESEARCH_UP__STOP_WAIT_S": "30",
        "IMAGESEARCH_SERVICE__PORT": str(free_port()),
        "IMAGESEARCH_SERVICE__RELOAD_POLL_SECONDS": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    catalog_step(settings, record=False, progress=False)
    encoder = Encoder.load(saved_encoder)
    registry.log_encoder(encoder, settings, run_name="first", alias=registry.CHAMPION)
    registry.log_encoder(encoder, settings, run_name="second")
    backfill_step(settings, progress=False)
    index_step(settings, record=False)
    return settings


def wait_for(url: str, path: str, supervisor: subprocess.Popen, logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            pytest.fail(f"supervisord exited early:\n{_tails(logs)}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} not up after {START_TIMEOUT_S}s:\n{_tails(logs)}")


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(logs.glob("*.log")))


class Traffic(threading.Thread):
    """A user searching every 0.2 s; every answer's status and model version are kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.answers = url, threading.Event(), []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                response = client.post(f"{self.url}/search", json={"text": "a noisy cat", "k": 3})
                version = response.json().get("model_version") if response.status_code == 200 else None
                self.answers.append((response.status_code, version))
                time.sleep(0.2)


def test_make_up_serves_a_champion_moved_in_the_mlflow_ui_without_a_failed_request(served_workspace):
    settings = served_workspace
    urls = {program.name: program.url for program in programs(settings)}
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "imagesearch.cli", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    traffic = Traffic(urls["search"])
    try:
        wait_for(urls["search"], "/health", supervisor, settings.logs_dir)
        wait_for(urls["mlflow"], "/health", supervisor, settings.logs_dir)
        wait_for(urls["dagster-webserver"], "/server_info", supervisor, settings.logs_dir)
        for dagster_log in ("dagster-webserver.log", "dagster-daemon.log"):  # no race on its storage
            log = (settings.logs_dir / dagster_log).read_text()
            assert "CommandError" not in log, _tails(settings.logs_dir)
        assert httpx.get(f"{urls['search']}/health").json()["model_version"] == "models:/imagesearch/1"
        traffic.start()
        # what the registry page's "add alias" does: the REST call, through the MLflow server
        MlflowClient(tracking_uri=urls["mlflow"]).set_registered_model_alias(
            "imagesearch", registry.CHAMPION, "2"
        )
        moved_at = time.monotonic()
        deadline = moved_at + SWAP_TIMEOUT_S
        served = None
        while time.monotonic() < deadline and served != "models:/imagesearch/2":
            time.sleep(2)
            served = httpx.get(f"{urls['search']}/health", timeout=10).json()["model_version"]
        assert served == "models:/imagesearch/2", _tails(settings.logs_dir)
        print(f"the moved champion served {time.monotonic() - moved_at:.0f} s after the alias moved")
        time.sleep(1)
    finally:
        traffic.stop.set()
        supervisor.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = supervisor.communicate(timeout=120)
    traffic.join(timeout=30)
    statuses = [status for status, _ in traffic.answers]
    assert statuses and set(statuses) == {200}, statuses
    assert {version for _, version in traffic.answers} == {"models:/imagesearch/1", "models:/imagesearch/2"}
    assert supervisor.returncode == 0, output
    for name, url in urls.items():
        assert (settings.logs_dir / f"{name}.log").stat().st_size > 0, name
        if url:
            with pytest.raises(httpx.TransportError):  # stopped, not left behind
                httpx.get(url, timeout=2)
