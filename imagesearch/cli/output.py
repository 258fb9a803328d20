"""How the command line shows results to a person: tables, one-line summaries, rankings.

Command bodies call a step and hand its result here; `--json` output is printed by the commands.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from imagesearch.cli.app import console
from imagesearch.common.doctor import DoctorReport


def print_summary(summary: dict) -> None:
    table = Table(show_header=False, box=None)
    for key, value in summary.items():
        table.add_row(
            key, ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        )
    console.print(table)


def print_index(folder: Path, manifest) -> None:
    console.print(
        f"indexed {manifest.count} images in [bold]{folder}[/]: {manifest.factory} ({manifest.reason}); "
        f"params {manifest.params}, recall@10 {manifest.recall_at_10:.3f} vs exact, "
        f"{manifest.latency_ms:.2f} ms/query, {manifest.bytes_per_vector:.0f} B/vector"
    )


def print_doctor(report: DoctorReport) -> None:
    console.rule("settings")
    console.print_json(data=report.settings)
    console.rule("state")
    for name, location in report.locations.items():
        mark = "[green]ok[/]" if location["exists"] else "[yellow]--[/]"
        console.print(f"{mark} {name:<17} {location['path']}", highlight=False)
    console.rule("versions")
    for name, version in report.versions.items():
        console.print(f"{name:<22} {version}", highlight=False)
    console.rule("gpu")
    console.print(report.gpu)
    console.rule("missing")
    for item in report.missing or ["nothing"]:
        console.print(f"- {item}", highlight=False)


def epoch_line(epoch: int, metrics: dict[str, float]) -> str:
    return f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
