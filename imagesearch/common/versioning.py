"""Data versioning: every DVC and git call of the project lives here.

The workspace folder (`Settings.home`) is its own git + DVC repository, separate from the code
repository: the pipeline file is the project's ``dvc.yaml`` (linked in), each pipeline step is a
DVC stage, and recording a step's outputs is ``dvc commit`` + a git commit of ``dvc.lock`` +
``dvc push`` to the local remote. A past version comes back with ``git checkout REV -- dvc.lock``
and ``dvc checkout``, which `DataRepo.restore` does for one stage.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

GIT_IDENTITY = (
    "-c",
    "user.name=imagesearch",
    "-c",
    "user.email=imagesearch@localhost",
    "-c",
    "commit.gpgsign=false",
)
LOCK_FILE = "dvc.lock"
REMOTE_NAME = "local"


class VersioningError(RuntimeError):
    """A DVC or git command failed; the message carries its output."""


@dataclass(frozen=True, slots=True)
class StageVersion:
    """One recorded version of a stage's outputs."""

    stage: str
    commit: str
    outputs: dict[str, str]  # output path (relative to the workspace) -> DVC md5
    message: str = ""

    @property
    def short_commit(self) -> str:
        return self.commit[:10]


class DataRepo:
    """The workspace's git + DVC repository."""

    def __init__(
        self, root: Path, *, dvc: Path | None, pipeline_file: Path, cache_dir: Path, remote_dir: Path
    ):
        self.root = root
        self.dvc = dvc
        self.pipeline_file = pipeline_file
        self.cache_dir = cache_dir
        self.remote_dir = remote_dir

    # --- set-up ------------------------------------------------------------------------------
    def ensure_initialised(self, ignored: list[str]) -> None:
        """Create the repository, DVC cache and local remote if missing; safe to call every time."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if not (self.root / ".git").exists():
                self._git("init", "-q", "-b", "main")
            if not (self.root / ".dvc").exists():
                self._dvc("init", "-q")
            self._dvc("config", "cache.dir", str(self.cache_dir))
            self._dvc("remote", "add", "--default", "--force", REMOTE_NAME, str(self.remote_dir))
            self._dvc("config", "core.analytics", "false")
            self._link_pipeline()
            _ensure_lines(self.root / ".gitignore", ignored)
            self._git("add", "--all", ".dvc", ".dvcignore", ".gitignore", "dvc.yaml")
            self._commit_if_changed("workspace: initialise")

    def _link_pipeline(self) -> None:
        link = self.root / "dvc.yaml"
        if link.is_symlink() and link.resolve() == self.pipeline_file.resolve():
            return
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(self.pipeline_file.resolve())

    # --- versions ----------------------------------------------------------------------------
    def record(self, stages: str | list[str], message: str) -> StageVersion:
        """Cache the stages' current outputs, commit their hashes, push them to the local remote.

        Returns the version of the last stage named.
        """
        stages = [stages] if isinstance(stages, str) else stages
        with self._lock():
            self._dvc("commit", "--force", *stages)
            self._git("add", "--all", LOCK_FILE, *self._gitignores())
            self._commit_if_changed(message)
            self._dvc("push", "--quiet", "--remote", REMOTE_NAME, *stages)
            return self.current(stages[-1])

    def current(self, stage: str) -> StageVersion:
        commit = self._git("rev-parse", "HEAD").strip()
        message = self._git("log", "-1", "--format=%s").strip()
        return StageVersion(stage, commit, stage_outputs(self._read_lock_at(None), stage), message)

    def history(self, stage: str) -> list[StageVersion]:
        """Every committed version of the stage's outputs, newest first."""
        log = self._git("log", "--format=%H%x09%s", "--", LOCK_FILE)
        versions, seen = [], set()
        for line in log.splitlines():
            commit, _, message = line.partition("\t")
            outputs = stage_outputs(self._read_lock_at(commit), stage)
            key = tuple(sorted(outputs.items()))
            if outputs and key not in seen:
                seen.add(key)
                versions.append(StageVersion(stage, commit, outputs, message))
        return versions

    def restore(self, stage: str, revision: str) -> StageVersion:
        """Bring back the stage's outputs as they were at `revision` and record that as a new commit."""
        with self._lock():
            wanted = stage_outputs(self._read_lock_at(revision), stage)
            if not wanted:
                raise VersioningError(f"revision {revision} has no recorded outputs for stage {stage!r}")
            lock = self._read_lock_at(None)
            lock.setdefault("stages", {})[stage] = self._read_lock_at(revision)["stages"][stage]
            (self.root / LOCK_FILE).write_text(yaml.safe_dump(lock, sort_keys=False))
            self._dvc("checkout", "--force", stage)
            self._git("add", LOCK_FILE)
            self._commit_if_changed(f"{stage}: restore version of {revision[:10]}")
            return self.current(stage)

    # --- plumbing ----------------------------------------------------------------------------
    def _read_lock_at(self, revision: str | None) -> dict:
        if revision is None:
            path = self.root / LOCK_FILE
            return yaml.safe_load(path.read_text()) if path.exists() else {}
        return yaml.safe_load(self._git("show", f"{revision}:{LOCK_FILE}")) or {}

    def _gitignores(self) -> list[str]:
        return [
            p
            for p in self._git("ls-files", "--others", "--modified", "--exclude-standard").split()
            if p.endswith(".gitignore")
        ]

    def _commit_if_changed(self, message: str) -> None:
        if self._git("status", "--porcelain", "--untracked-files=no").strip() or not self._has_commits():
            self._git(*GIT_IDENTITY, "commit", "-q", "--allow-empty", "-m", message)

    def _has_commits(self) -> bool:
        return (
            subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.root, capture_output=True).returncode == 0
        )

    def _git(self, *args: str) -> str:
        return _run(["git", *args], cwd=self.root)

    def _dvc(self, *args: str) -> str:
        if self.dvc is None:
            raise VersioningError("DVC is not installed: run `make setup` (it installs DVC in .tools/dvc)")
        return _run([str(self.dvc), *args], cwd=self.root)

    @contextmanager
    def _lock(self, timeout_s: float = 600.0) -> Iterator[None]:
        """Serialise repository writes: two runs committing at once would corrupt dvc.lock. A kill
        releases the lock (flock); a run that waits past `timeout_s` fails instead of hanging, and a
        git `index.lock` left by a killed commit is removed, since no one else writes here now."""
        with open(self.root / ".imagesearch.lock", "w") as handle:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise VersioningError(
                            f"the workspace {self.root} stayed locked by another run for {timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.2)
            try:
                (self.root / ".git" / "index.lock").unlink(missing_ok=True)
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def stage_outputs(lock: dict, stage: str) -> dict[str, str]:
    """Output path -> md5 of one stage in a parsed dvc.lock (empty if the stage is not there)."""
    entry = (lock.get("stages") or {}).get(stage) or {}
    return {out["path"]: out["md5"] for out in entry.get("outs", [])}


def _run(command: list[str], *, cwd: Path) -> str:
    # Stages that DVC runs call our CLI: it must be on PATH and aim at this same workspace.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = os.environ | {
        "DVC_NO_ANALYTICS": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "PATH": path,
        "IMAGESEARCH_HOME": str(cwd),
    }
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        shown = " ".join(command[:1] + [a for a in command[1:] if not a.startswith("user.")])
        raise VersioningError(
            f"`{shown}` failed in {cwd} ({result.returncode}):\n{result.stderr or result.stdout}"
        )
    return result.stdout


def _ensure_lines(path: Path, lines: list[str]) -> None:
    existing = path.read_text().splitlines() if path.exists() else []
    missing = [line for line in lines if line not in existing]
    if missing:
        path.write_text("\n".join([*existing, *missing]) + "\n")


def code_version(root: Path) -> dict[str, str]:
    """The git commit of the code at `root` and whether the working tree has uncommitted changes."""
    try:
        commit = _run(["git", "rev-parse", "HEAD"], cwd=root).strip()
        dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root).strip())
    except (VersioningError, OSError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}
