"""Start Dagster against the workspace: `python -m dagster_project.run ui|materialize ...`.

Sets DAGSTER_HOME from the settings (the only place paths live) and restores the default SIGINT/
SIGTERM handlers before exec: a server started in the background of a non-interactive shell inherits
*ignored* signals and could then only be killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from imagesearch.common.workspace import init_workspace
from imagesearch.settings import PROJECT_ROOT, Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dagster_project.run")
    commands = parser.add_subparsers(dest="command", required=True)
    ui = commands.add_parser("ui", help="dagster dev: webserver + daemon")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", default="3000")
    webserver = commands.add_parser("webserver", help="the webserver alone (`make up` runs the daemon apart)")
    webserver.add_argument("--host", default="127.0.0.1")
    webserver.add_argument("--port", default="3000")
    commands.add_parser("daemon", help="the daemon alone: sensors, schedules and the run queue")
    commands.add_parser("migrate", help="create or migrate the instance's storage (before its servers start)")
    run = commands.add_parser("materialize", help="materialize assets, recorded in the workspace instance")
    run.add_argument("--select", required=True, help="asset selection, e.g. image_catalog")
    run.add_argument("--partition-range", help="partitions to run as one run, e.g. 0...f")
    args = parser.parse_args(argv)

    settings = Settings()
    init_workspace(settings)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    os.chdir(PROJECT_ROOT)
    dagster = str(Path(sys.executable).parent / "dagster")
    if args.command == "ui":
        command = [dagster, "dev", "-h", args.host, "-p", args.port, "-w", "workspace.yaml"]
    elif args.command == "webserver":
        dagster = str(Path(sys.executable).parent / "dagster-webserver")
        command = [dagster, "-h", args.host, "-p", args.port, "-w", "workspace.yaml"]
    elif args.command == "daemon":
        dagster = str(Path(sys.executable).parent / "dagster-daemon")
        command = [dagster, "run", "-w", "workspace.yaml"]
    elif args.command == "migrate":
        command = [dagster, "instance", "migrate"]
    else:
        command = [
            dagster,
            "asset",
            "materialize",
            "-m",
            "dagster_project.definitions",
            "--select",
            args.select,
        ]
        if args.partition_range:
            command += ["--partition-range", args.partition_range]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    os.execv(dagster, command)


if __name__ == "__main__":
    main()
