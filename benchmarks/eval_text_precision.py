"""The int8 text graph against the float32 one (`MODEL__TEXT_PRECISION`): text->image metrics on every
held-out set, in and out of domain, vector and hybrid ranking, with the move int8 makes; and one
short query's latency on each graph beside a bare torch forward, in this process.

Image vectors (and so the index and every image->image metric) do not depend on the text graph.

    .venv/bin/python benchmarks/eval_text_precision.py [--model champion]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imagesearch.evaluation.sets import EvalSets
from imagesearch.evaluation.step import evaluate_everywhere, read_outside_sets
from imagesearch.models.registry import load_encoder, pin_reference
from imagesearch.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from bench_service import median_ms, torch_encoder

PRECISIONS = ("float32", "int8")
METRICS = ("ndcg_at_10", "recall_at_10")
QUERY = ["a red car"]
REPEATS = 300


def text_rows(results: dict) -> dict[str, dict[str, float]]:
    """Text->image metrics by set and query origin: vector ranking, and hybrid (the service's mode)."""
    found = {key: metrics for key, metrics in results.items() if "text_to_image" in key}
    found |= {f"hybrid {key}": metrics for key, metrics in results.get("mode:hybrid", {}).items()}
    return {
        key: {name: float(metrics[name]) for name in (*METRICS, "queries")}
        for key, metrics in found.items()
        if "text_to_image" in key
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="champion")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/text_precision.json"))
    args = parser.parse_args()
    settings = Settings()
    model = pin_reference(args.model, settings)
    sets, outside = EvalSets.read(settings.evaluation_dir), read_outside_sets(settings)
    peer = torch_encoder(model, settings)
    latency = {"torch": median_ms(lambda: peer.encode_texts(QUERY), REPEATS)}
    metrics = {}
    for precision in PRECISIONS:
        options = settings.model.model_copy(update={"runtime": "onnx", "text_precision": precision})
        encoder = load_encoder(model, settings.model_copy(update={"model": options}))
        latency[precision] = median_ms(lambda: encoder.encode_texts(QUERY), REPEATS)  # noqa: B023 (called here)
        metrics[precision] = text_rows(evaluate_everywhere(encoder, sets, outside, modes=True)[1])

    print(
        f"model {model}; one short query, median ms: " + ", ".join(f"{k} {v:.2f}" for k, v in latency.items())
    )
    print("\n| held-out set | queries | nDCG@10 float32 | int8 | move | R@10 float32 | int8 | move |")
    print("|---|---|---|---|---|---|---|---|")
    for name, values in metrics["float32"].items():
        quantized = metrics["int8"][name]
        cells = [f"{name} | {int(values['queries'])}"]
        for metric in METRICS:
            move = quantized[metric] - values[metric]
            cells.append(f"{values[metric]:.4f} | {quantized[metric]:.4f} | {move:+.4f}")
        print("| " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": model, "latency_ms": latency, "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main()
