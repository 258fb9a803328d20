"""`make up`: the Dagster webserver and daemon, the MLflow UI and the search service under one
supervisor (supervisord), each on loopback with a log file of its own.

With the index sensors switched on (settings.sensors_on), a person who moves `@champion` in the
MLflow UI sees the service answer with it minutes later: champion_sensor -> embeddings_job ->
index_after_embeddings -> index_job -> the service's index poll swaps the new pair in.
Ctrl-C stops supervisord, which stops every process (their whole process groups) before it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from imagesearch.settings import PROJECT_ROOT, Settings


@dataclass(frozen=True, slots=True)
class Program:
    name: str
    command: list[str]
    environment: dict[str, str]
    url: str  # where it answers once up


def programs(settings: Settings) -> list[Program]:
    """What `make up` runs, in start order."""
    python, bin_dir = sys.executable, Path(sys.executable).parent
    host, up = settings.service.host, settings.up
    dagster_env = {"IMAGESEARCH_SENSORS_ON": "true"}
    mlflow = [str(bin_dir / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(up.mlflow_port)]
    return [
        Program(
            "mlflow",
            [*mlflow, "--backend-store-uri", settings.mlflow_tracking_uri],
            {},
            f"http://127.0.0.1:{up.mlflow_port}",
        ),
        Program(
            "dagster-webserver",
            [python, "-m", "dagster_project.run", "webserver", "--port", str(up.dagster_port)],
            dagster_env,
            f"http://127.0.0.1:{up.dagster_port}",
        ),
        Program("dagster-daemon", [python, "-m", "dagster_project.run", "daemon"], dagster_env, ""),
        Program(
            "search",
            [str(bin_dir / "imagesearch"), "serve"],
            {},
            f"http://{host}:{settings.service.port}",
        ),
    ]


def supervisor_config(settings: Settings) -> str:
    """supervisord's configuration: foreground, one log per program, whole process groups stopped."""
    logs, run = settings.logs_dir, settings.home / "up"
    sections = [
        _section(
            "supervisord",
            nodaemon="true",
            logfile=logs / "supervisord.log",
            pidfile=run / "supervisord.pid",
            childlogdir=logs,
        ),
        _section("unix_http_server", file=run / "supervisor.sock", chmod="0700"),
        _section("supervisorctl", serverurl=f"unix://{run / 'supervisor.sock'}"),
        _section("rpcinterface:supervisor", **{"supervisor.rpcinterface_factory": _RPC_FACTORY}),
    ]
    for priority, program in enumerate(programs(settings), start=1):
        environment = ",".join(f'{key}="{value}"' for key, value in program.environment.items())
        sections.append(
            _section(
                f"program:{program.name}",
                command=" ".join(_quoted(part) for part in program.command),
                directory=PROJECT_ROOT,
                priority=priority * 10,
                autorestart="unexpected",
                startsecs=5,
                stopsignal="TERM",
                stopwaitsecs=settings.up.stop_wait_s,
                stopasgroup="true",  # the webserver's code server, the daemon's run processes
                killasgroup="true",
                redirect_stderr="true",
                stdout_logfile=logs / f"{program.name}.log",
                stdout_logfile_maxbytes="50MB",
                stdout_logfile_backups=3,
                **({"environment": environment} if environment else {}),
            )
        )
    return "\n".join(sections)


_RPC_FACTORY = "supervisor.rpcinterface:make_main_rpcinterface"


def _section(name: str, **values) -> str:
    lines = [f"[{name}]"] + [f"{key}={_escaped(str(value))}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _escaped(value: str) -> str:
    return value.replace("%", "%%")  # supervisord expands %(name)s in every value


def _quoted(part: str) -> str:
    return f'"{part}"' if any(c.isspace() for c in part) else part


def write_config(settings: Settings) -> Path:
    """The configuration file, its log and socket folders made."""
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    (settings.home / "up").mkdir(parents=True, exist_ok=True)
    path = settings.home / "up" / "supervisord.conf"
    path.write_text(supervisor_config(settings))
    return path


def prepare_dagster_storage() -> None:
    """Create (or migrate) Dagster's sqlite storage in one process before its servers start: the
    webserver and the daemon each create it when missing, and started together on a fresh workspace
    they race on its schema; the daemon, which runs the sensors, can die of it."""
    migrate = [sys.executable, "-m", "dagster_project.run", "migrate"]
    done = subprocess.run(migrate, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"preparing Dagster's storage failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def exec_supervisor(config: Path) -> None:
    """Replace this process with supervisord in the foreground (Ctrl-C reaches it, and it stops all)."""
    supervisord = str(Path(sys.executable).parent / "supervisord")
    os.execv(supervisord, [supervisord, "-n", "-c", str(config)])
