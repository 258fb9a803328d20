"""The offline evaluation's report: models, metrics per query type, the served-index check, the table.

Written as ``report.json`` + ``table.md`` in the evaluation folder; read back by the promotion step,
the CLI's `evaluate show` and the asset checks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

REPORT_FILE, TABLE_FILE = "report.json", "table.md"


@dataclass(slots=True)
class EvaluationReport:
    models: dict[str, str]  # label -> pinned model reference (or a description for baselines)
    results: dict[str, dict[str, dict[str, float]]]  # label -> query type -> metric -> value
    index: dict[str, float | int | str | bool]
    table: list[dict]
    plots: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    # guarded metric -> the challenger's paired difference from the champion: difference, low, high
    # (95% bootstrap interval), queries
    guards: dict[str, dict[str, float]] = field(default_factory=dict)

    def metric(self, label: str, dotted: str) -> float | None:
        query_type, _, name = dotted.rpartition(".")
        return self.results.get(label, {}).get(query_type, {}).get(name)

    def markdown(self) -> str:
        table = pd.DataFrame(self.table).to_markdown(index=False, floatfmt=".3f")
        if not self.guards:
            return table
        guards = pd.DataFrame([{"guarded metric": name, **found} for name, found in self.guards.items()])
        return (
            f"{table}\n\nGuarded metrics, challenger - champion paired by query (95% bootstrap "
            f"interval):\n\n{guards.to_markdown(index=False, floatfmt='+.4f')}"
        )

    def write(self, folder: Path) -> None:
        (folder / REPORT_FILE).write_text(json.dumps(asdict(self), indent=2, default=float))
        (folder / TABLE_FILE).write_text(self.markdown())

    @classmethod
    def read(cls, folder: Path) -> EvaluationReport:
        path = folder / REPORT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no evaluation report in {folder}: run the offline evaluation first")
        return cls(**json.loads(path.read_text()))


def served_index_problems(index: dict, floor: float) -> list[str]:
    """What is wrong with the served index, from the evaluation's check of it (empty: sound)."""
    failures = [
        ("non-finite vectors", not index["finite"]),
        ("index size differs from the catalog", index["vectors"] != index["catalog_images"]),
        (f"recall@10 vs exact below {floor}", not index["recall_at_10_vs_exact"] >= floor),
    ]
    return [problem for problem, failed in failures if failed]
