"""The kill matrix of `make reliability`: pipeline steps (catalog, CLI backfill, the backfill as a
Dagster partition-range run, index, training) on a small workspace, each killed with SIGKILL at
random moments and exactly at its first rename (strace fault injection, in its own process and in
any it starts), then run to completion. Each must end equal to an uninterrupted run (training: the
same selection and one registered version), leave no leftovers, keep a loadable served index, and
leave git/DVC working. Then a DVC restore of the served index under load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from PIL import Image

from imagesearch.common.workspace import data_repo
from imagesearch.embeddings.store import model_key, read_model_embeddings
from imagesearch.index.store import load_index
from imagesearch.models.registry import connect
from imagesearch.settings import Settings

CLI = str(Path(sys.executable).parent / "imagesearch")
DAGSTER_RANGE = [sys.executable, "-m", "dagster_project.run", "materialize", "--select", "image_embeddings"]
STEPS = {
    "catalog": [CLI, "catalog", "build"],
    "backfill": [CLI, "embeddings", "backfill", "--model", "v0", "--quiet"],
    "backfill as a Dagster partition-range run": [*DAGSTER_RANGE, "--partition-range", "0...f"],
    "index": [CLI, "index", "from-catalog", "--model", "v0"],
    "training": [CLI, "train", "--quiet", "--no-record"],
}
TRAINING_INPUTS = [
    ["training-data", "build", "augmentation", "--quiet", "--no-record"],
    ["training-data", "build", "tags", "--quiet", "--no-record"],
    ["training-data", "mix", "--no-record"],
]


def pipeline_kills(root: Path, kills: int, seed: int = 0) -> list[dict]:
    images = _images(root / "pipeline-images", 600)
    reference, killed = root / "reference", root / "killed"
    durations = {}
    for step in STEPS:
        if step == "training":
            _training_inputs(reference, images)
        started = time.perf_counter()
        _run(reference, images, step)
        durations[step] = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    rows = []
    for step in STEPS:
        if step == "index":  # a served index must already exist: the kills must never lose it
            _run(killed, images, step)
        if step == "training":
            _training_inputs(killed, images)
        if step.startswith("backfill as"):  # the same embeddings again, this time through Dagster
            shutil.rmtree(Settings(home=killed).embeddings_dir / model_key("v0"))
        moments = sorted(rng.uniform(0.3, max(0.6, durations[step] * 0.9), kills))
        for moment in moments:
            _kill_after(killed, images, step, moment)
            _check_served_index(killed)
        injected = _kill_at_first_rename(killed, images, step)
        _run(killed, images, step)
        rows.append(
            {
                "suite": f"kill -9 {step} ({durations[step]:.0f} s uninterrupted)",
                "kills": len(moments) + len(injected),
                "at moments (s)": [round(m, 2) for m in moments],
                "at first rename (strace)": injected,
                "equal to uninterrupted": _equal(reference, killed, step),
                "leftovers": _leftovers(killed),
                "versions still listed": _versions_work(killed, step),
            }
        )
    rows.append(restore_under_load(killed, images))
    return rows


def restore_under_load(home: Path, images: Path) -> dict:
    """`imagesearch versions restore index <older>` on the served workspace while four clients
    search: DVC rewrites the folder in place, so the watcher may see it half-restored; it must keep
    serving the old pair until the restored one loads whole."""
    from reliability import free_port, wait_until_up
    from reliability_faults import ADMIN, Searchers, _swap_outcome

    history = data_repo(Settings(home=home)).history("index")
    older = next(v for v in history[1:] if v.outputs != history[0].outputs)
    port = free_port()
    env = _env(home, images) | {
        "IMAGESEARCH_SERVICE__RELOAD_POLL_SECONDS": "0.5",
        "IMAGESEARCH_SERVICE__ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer "),
    }
    server = subprocess.Popen(
        [CLI, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base)
        with httpx.Client(base_url=base, timeout=120) as admin, Searchers(base) as searchers:
            restored = subprocess.run(
                [CLI, "versions", "restore", "index", older.commit], env=env, capture_output=True
            )
            outcome = _swap_outcome(admin)
            time.sleep(2)
    finally:
        server.terminate()
        server.wait(30)
    return {
        "suite": "versions restore index under 4 clients",
        "restore exit": restored.returncode,
        "swap": outcome,
        "requests": sum(searchers.statuses.values()),
        "failed requests": sum(n for s, n in searchers.statuses.items() if s != "200"),
    }


def _training_inputs(home: Path, images: Path) -> None:
    for command in TRAINING_INPUTS:
        subprocess.run([CLI, *command], env=_env(home, images), check=True, capture_output=True)


def _images(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(1)
    for number in range(count):
        category = folder / f"category{number % 4}"
        category.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(category / f"image{number:04d}.png")
    return folder


def _env(home: Path, images: Path) -> dict[str, str]:
    return os.environ | {
        "IMAGESEARCH_HOME": str(home),
        "IMAGESEARCH_SOURCES": json.dumps([{"name": "images", "path": str(images)}]),
        "IMAGESEARCH_CATALOG__WORKERS": "1",
        # training: the two sources every folder has, no outside collections (no downloads here)
        "IMAGESEARCH_TRAINING_DATA__SOURCE_WEIGHTS": json.dumps(
            {"augmentation": 1.0, "tags": 1.0, "classifier": 0.0, "judgments": 0.0, "clicks": 0.0}
        ),
        "IMAGESEARCH_EVALUATION__OOD_COLLECTIONS": "[]",
        "IMAGESEARCH_TRAINING__FROZEN_EPOCHS": "6",
        "IMAGESEARCH_EMBEDDINGS__MODEL": "v0",
    }


def _run(home: Path, images: Path, step: str, timeout: float | None = 900) -> None:
    subprocess.run(STEPS[step], env=_env(home, images), check=True, capture_output=True, timeout=timeout)


def _kill_after(home: Path, images: Path, step: str, seconds: float) -> None:
    process = subprocess.Popen(
        STEPS[step],
        env=_env(home, images),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(seconds)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # the step and any worker it started
    process.wait()


def _kill_at_first_rename(home: Path, images: Path, step: str) -> dict[str, str]:
    """SIGKILL delivered by strace at the first rename/exchange system call: of the step's own process
    (the index folder's exchange), and of any process it starts (git and DVC, when it records)."""
    inject = "inject=rename,renameat,renameat2:signal=KILL:when=1"
    outcomes = {}
    for scope, follow in (("own process", []), ("children too", ["-f"])):
        command = ["strace", *follow, "-qq", "-o", os.devnull, "-e", inject, "--", *STEPS[step]]
        result = subprocess.run(command, env=_env(home, images), capture_output=True, timeout=900)
        _check_served_index(home)
        said = result.stderr.decode(errors="replace").strip().splitlines()
        outcomes[scope] = f"exit {result.returncode}" + (f": {said[-1][:100]}" if said else "")
    return outcomes


def _check_served_index(home: Path) -> None:
    folder = Settings(home=home).search_index_dir
    if folder.exists() or any(folder.parent.glob(f".{folder.name}.*")):
        load_index(folder)  # raises when a kill left no complete index to serve


def _equal(reference: Path, killed: Path, step: str) -> bool:
    a, b = Settings(home=reference), Settings(home=killed)
    if step == "catalog":
        columns = ["id", "path", "split"]
        return _rows(a.catalog_path, columns).equals(_rows(b.catalog_path, columns))
    if step.startswith("backfill"):
        ids = pd.read_parquet(a.catalog_path)["id"]
        key = model_key("v0")
        left, _ = read_model_embeddings(a.embeddings_dir / key, ids)
        right, _ = read_model_embeddings(b.embeddings_dir / key, ids)
        return bool(np.allclose(left, right, atol=1e-3))
    if step == "training":  # resumed from checkpoints: the same selection, one registered version
        left, right = (json.loads(s.trained_metrics_path.read_text()) for s in (a, b))
        same = (
            left["epoch"] == right["epoch"] and abs(left["selection_score"] - right["selection_score"]) < 1e-3
        )
        return same and _versions_registered(b) == _versions_registered(a) == 1
    left, right = load_index(a.search_index_dir), load_index(b.search_index_dir)
    return left.ids.equals(right.ids) and left.index.ntotal == right.index.ntotal


def _versions_registered(settings: Settings) -> int:
    """Trained versions in the workspace's registry (v0 is not registered by these steps)."""
    client = connect(settings)
    return len(client.search_model_versions(f"name='{settings.model.registered_name}'"))


def _rows(path: Path, columns: list[str]) -> pd.DataFrame:
    return pd.read_parquet(path)[columns].sort_values("id").reset_index(drop=True)


def _leftovers(home: Path) -> list[str]:
    patterns = (".*.staging-*", ".*.retired-*", ".*.tmp-*")
    found = [p for pattern in patterns for p in (home / "data").rglob(pattern)]
    if (home / ".git" / "index.lock").exists():
        found.append(home / ".git" / "index.lock")
    return [str(p.relative_to(home)) for p in found]


def _versions_work(home: Path, step: str) -> bool:
    stage = {"index": "index", "training": "train"}.get(step, "catalog")
    listed = subprocess.run([CLI, "versions", "list", stage], env=_env(home, Path(".")), capture_output=True)
    return listed.returncode == 0
