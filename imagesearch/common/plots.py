"""Pictures for MLflow runs: the loss curve and a grid of example queries with their results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from imagesearch.common.images import DEFAULT_LIMITS, ImageRejected, open_rgb


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Losses (left) and validation recall@10 (right) per epoch."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({k for row in history for k in row}):
        epochs = [row["epoch"] for row in history if key in row]
        values = [row[key] for row in history if key in row]
        if key.startswith("loss"):
            left.plot(epochs, values, marker="o", label=key)
        elif key.startswith("val_"):
            right.plot(epochs, values, marker="o", label=key.removeprefix("val_"))
    left.set(title="training loss", xlabel="epoch")
    right.set(title="validation recall@10 (val split)", xlabel="epoch", ylim=(0, 1))
    return _save(figure, path)


def online_metrics_plot(summary, path: Path) -> Path:
    """CTR@k and MRR per day, one line per (model version, real/simulated)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (model, simulated), rows in summary.groupby(["model_version", "simulated"]):
        label = f"{model}{' (simulated)' if simulated else ''}"
        for axis, metric in zip(axes, ["ctr_at_k", "mrr"], strict=True):
            axis.plot(rows["day"], rows[metric], marker="o", label=label)
    for axis, title in zip(axes, ["CTR@k", "MRR of clicks"], strict=True):
        axis.set(title=title, ylim=(0, 1))
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    """Grid and legend on every axis, tight layout, PNG file, figure closed."""
    for axis in figure.axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@dataclass(frozen=True, slots=True)
class ExampleQuery:
    label: str
    image_path: str | None  # the query image, or None for a text query
    results: list[tuple[str, float | None]]  # (image path, score or None), best first


def metric_bars(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """`metric` per model (bars) for each query type (groups)."""
    pivot = table.pivot_table(index="query_type", columns="model", values=metric, sort=False)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(pivot)), 4))
    pivot.plot.bar(ax=axis, rot=0)
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} on the held-out test split")
    return _save(figure, path)


def recall_curves(curves: dict[str, dict[str, list[float]]], ks: list[int], path: Path) -> Path:
    """Recall@k against k, one line per model, one panel per query type."""
    types = sorted({query_type for by_type in curves.values() for query_type in by_type})
    figure, axes = plt.subplots(1, len(types), figsize=(5 * len(types), 4), squeeze=False)
    for axis, query_type in zip(axes[0], types, strict=True):
        for model, by_type in curves.items():
            if query_type in by_type:
                axis.plot(ks, by_type[query_type], marker=".", label=model)
        axis.set(xscale="log", xlabel="k", ylabel="recall@k", title=query_type)
    return _save(figure, path)


def result_grid(queries: list[ExampleQuery], path: Path, *, tile: int = 128) -> Path:
    """One row per query: the query (image or text) then its results with scores."""
    columns = 1 + max((len(q.results) for q in queries), default=0)
    grid = Image.new("RGB", (columns * tile, len(queries) * (tile + 16)), "white")
    draw = ImageDraw.Draw(grid)
    for row, query in enumerate(queries):
        top = row * (tile + 16)
        if query.image_path:
            grid.paste(_thumbnail(query.image_path, tile), (0, top))
        _wrapped(draw, query.label, (4, top + 4), width=tile // 7)
        for column, (image_path, score) in enumerate(query.results, start=1):
            grid.paste(_thumbnail(image_path, tile), (column * tile, top))
            if score is not None:
                draw.text((column * tile + 4, top + tile + 2), f"{score:.3f}", fill="black")
    grid.save(path)
    return path


def _thumbnail(image_path: str, tile: int) -> Image.Image:
    try:
        image = open_rgb(Path(image_path), DEFAULT_LIMITS).rgb
    except (ImageRejected, OSError):
        return Image.new("RGB", (tile, tile), "lightgray")
    return ImageOps.pad(image, (tile - 4, tile - 4), color="white").crop((-2, -2, tile - 2, tile - 2))


def _wrapped(draw: ImageDraw.ImageDraw, text: str, origin: tuple[int, int], width: int) -> None:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    draw.multiline_text(origin, "\n".join(lines[:6]), fill="darkblue")
