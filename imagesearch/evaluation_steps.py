"""Evaluation pipeline steps (called by the CLI, the DVC stages and the Dagster assets alike).

eval_sets_step: held-out evaluation sets from the catalog's test split (+ held-out judgments), DVC-versioned.
evaluation_step: every model of interest on those sets (exact search), the served index against exact
search, a metric table, plots, and MLflow metrics on the challenger's run.
promotion_step: the promotion rule applied to the last evaluation, recorded in the registry.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import mlflow
import numpy as np
import pandas as pd
import torch

from imagesearch import registry
from imagesearch.catalog import read_catalog
from imagesearch.encoders import Encoder, build_two_tower_encoder
from imagesearch.evaluation import (
    DEPTH,
    IMAGE_TO_IMAGE,
    TEXT_TO_IMAGE,
    EvalSets,
    ModelRankings,
    build_eval_sets,
    metrics_table,
    rank_corpus,
    recall_curve,
    score_rankings,
)
from imagesearch.index import load_index
from imagesearch.plots import ExampleQuery, metric_bars, recall_curves, result_grid
from imagesearch.promotion import Decision, PromotionRule, decide
from imagesearch.settings import Settings
from imagesearch.training_data import leakage_problems
from imagesearch.versioning import StageVersion
from imagesearch.workspace import init_workspace

EVAL_SETS_STAGE = "eval_sets"
REPORT_FILE, TABLE_FILE = "report.json", "table.md"
PRETRAINED = "pretrained features"
CURVE_KS = [1, 2, 5, 10, 20, 50, 100]
SERVED_DEPTH = 500  # ANN results per query through the served index, before keeping test images only


@dataclass(slots=True)
class EvalSetsResult:
    summary: dict[str, int]
    version: StageVersion | None


def eval_sets_step(settings: Settings, *, record: bool = True) -> EvalSetsResult:
    repo = init_workspace(settings) if record else None
    judged_path = settings.training_dir / "judgments_eval.parquet"
    sets = build_eval_sets(
        read_catalog(settings.catalog_path),
        pd.read_parquet(judged_path) if judged_path.exists() else None,
        max_image_queries=settings.evaluation.max_image_queries,
        tag_max_share=settings.evaluation.tag_max_share,
    )
    sets.write(settings.evaluation_dir)
    summary = sets.summary()
    version = repo.record(EVAL_SETS_STAGE, f"evaluation sets: {summary}") if repo else None
    return EvalSetsResult(summary, version)


@dataclass(slots=True)
class EvaluationReport:
    models: dict[str, str]  # label -> pinned model reference (or a description for baselines)
    results: dict[str, dict[str, dict[str, float]]]  # label -> query type -> metric -> value
    index: dict[str, float | int | str | bool]
    table: list[dict]
    plots: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None

    def metric(self, label: str, dotted: str) -> float | None:
        query_type, _, name = dotted.rpartition(".")
        return self.results.get(label, {}).get(query_type, {}).get(name)

    def markdown(self) -> str:
        return pd.DataFrame(self.table).to_markdown(index=False, floatfmt=".3f")

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


def evaluation_leakage(settings: Settings) -> list[str]:
    """Evaluation images or held-out judged queries found in the training examples (empty: held out)."""
    sets = EvalSets.read(settings.evaluation_dir)
    judged = set(sets.text_qrels.loc[sets.text_qrels["origin"] == "judgment", "query"])
    examples = pd.read_parquet(settings.examples_path)
    return leakage_problems(examples, read_catalog(settings.catalog_path), eval_queries=judged)


def evaluation_step(settings: Settings, *, models: dict[str, str] | None = None) -> EvaluationReport:
    """Evaluate the challenger, the champion, v0 and raw pretrained features on the held-out sets."""
    sets = EvalSets.read(settings.evaluation_dir)
    models = models or default_models(settings)
    results, curves, rankings, seen = {}, {}, {}, {}
    for label, reference in models.items():
        if reference in seen:  # e.g. the champion is still v0: evaluated once, reported under both labels
            results[label], curves[label], rankings[label] = (
                results[seen[reference]],
                curves[seen[reference]],
                rankings[seen[reference]],
            )
            continue
        seen[reference] = label
        rankings[label], results[label] = evaluate_encoder(registry.load_encoder(reference, settings), sets)
        curves[label] = _curves(sets, rankings[label])
    served = _through_served_index(settings, sets, models, rankings)
    if served is not None:
        label, rankings[label] = served
        results[label] = score_rankings(sets, rankings[label])
    raw = _pretrained_features(settings, sets.corpus["path"].tolist())
    rankings[PRETRAINED] = rank_corpus(sets, raw, None)
    results[PRETRAINED] = score_rankings(sets, rankings[PRETRAINED])
    curves[PRETRAINED] = _curves(sets, rankings[PRETRAINED])
    table = metrics_table(results)
    folder = settings.evaluation_dir
    plots = [
        metric_bars(table, "ndcg_at_10", folder / "ndcg_at_10.png"),
        recall_curves(curves, CURVE_KS, folder / "recall_at_k.png"),
        _example_grid(sets, rankings, models, folder / "examples.png"),
    ]
    report = EvaluationReport(
        {**models, PRETRAINED: settings.model.image_backbone},
        results,
        served_index_check(settings, sets),
        table.to_dict(orient="records"),
        [str(p) for p in plots],
    )
    report.mlflow_run_id = _log_to_mlflow(settings, report, models.get("challenger"))
    report.write(folder)
    return report


def evaluate_encoder(encoder: Encoder, sets: EvalSets) -> tuple[ModelRankings, dict[str, dict[str, float]]]:
    """Embed the test corpus, rank it for every query by exact search, score the rankings."""
    vectors = encoder.encode_images([Path(p) for p in sets.corpus["path"]])
    rankings = rank_corpus(sets, vectors, encoder.encode_texts)
    return rankings, score_rankings(sets, rankings)


def default_models(settings: Settings) -> dict[str, str]:
    """challenger (when one exists), champion, and v0: each pinned to a registry version."""
    v0 = registry.register_v0(settings).uri  # made champion when there is none yet
    models = {
        alias: registry.pin_reference(alias, settings)
        for alias in (registry.CHALLENGER, registry.CHAMPION)
        if registry.alias_version(settings, alias) is not None
    }
    return {**models, "v0": v0}


def served_index_check(settings: Settings, sets: EvalSets) -> dict:
    """The index the service serves: finite, one vector per catalog image, ANN recall@10 vs exact."""
    loaded = load_index(settings.search_index_dir)
    vectors = np.asarray(loaded.vectors, dtype=np.float32)
    rows = pd.Index(loaded.ids["id"]).get_indexer(sets.corpus["id"])
    queries = vectors[rows[rows >= 0]]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    pairs = zip(loaded.search(queries, 10)[1], exact.search(queries, 10)[1], strict=True)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])) if len(queries) else math.nan
    return {
        "model": loaded.manifest.model,
        "factory": loaded.manifest.factory,
        "vectors": int(loaded.index.ntotal),
        "catalog_images": len(read_catalog(settings.catalog_path)),
        "finite": bool(np.isfinite(vectors).all()),
        "recall_at_10_vs_exact": recall,
        "queries": len(queries),
    }


def _through_served_index(
    settings: Settings, sets: EvalSets, models: dict[str, str], exact: dict[str, ModelRankings]
) -> tuple[str, ModelRankings] | None:
    """The served model's rankings through the served (ANN) index, kept to test images.

    Next to the same model's exact-search row, the difference is what the ANN index loses. Only the
    top SERVED_DEPTH of the whole catalog is searched, so deep metrics (MRR past rank ~50) can only drop.
    """
    loaded = load_index(settings.search_index_dir)
    label = next((name for name, ref in models.items() if ref == loaded.manifest.model), None)
    if label is None:
        return None
    test_ids = set(sets.corpus["id"])
    ids = loaded.ids["id"].to_numpy()
    depth = min(loaded.index.ntotal, SERVED_DEPTH)

    def ranked(queries: np.ndarray, exclude: list[str | None]) -> list[list[str]]:
        found = loaded.search(np.ascontiguousarray(queries, dtype=np.float32), depth)[1]
        return [
            [i for i in ids[row[row >= 0]] if i in test_ids and i != skip][:DEPTH]
            for row, skip in zip(found, exclude, strict=True)
        ]

    rows = pd.Index(ids).get_indexer(list(exact[label].image))
    queries = [q for q, row in zip(exact[label].image, rows, strict=True) if row >= 0]
    image = dict(zip(queries, ranked(loaded.vectors[rows[rows >= 0]], queries), strict=True))
    texts = list(exact[label].text)
    encoder = registry.load_encoder(loaded.manifest.model, settings)
    text = (
        dict(zip(texts, ranked(encoder.encode_texts(texts), [None] * len(texts)), strict=True))
        if texts
        else {}
    )
    return f"{label} via index", ModelRankings(image, text)


def _curves(sets: EvalSets, rankings: ModelRankings) -> dict[str, list[float]]:
    out = {IMAGE_TO_IMAGE: recall_curve(sets, rankings.image, "query_image_id", CURVE_KS)}
    if rankings.text:
        out[TEXT_TO_IMAGE] = recall_curve(sets, rankings.text, "query", CURVE_KS)
    return out


@torch.inference_mode()
def _pretrained_features(settings: Settings, paths: list[str], batch: int = 32) -> np.ndarray:
    """The image backbone's pooled ImageNet features, before any head: the image->image floor."""
    encoder: Encoder = build_two_tower_encoder(settings.model)
    chunks = []
    for start in range(0, len(paths), batch):
        pixels = encoder.preprocess([Path(p) for p in paths[start : start + batch]]).to(encoder.device)
        chunks.append(
            torch.nn.functional.normalize(encoder.image_model.features(pixels), dim=-1).cpu().numpy()
        )
    return np.concatenate(chunks)


def _example_grid(
    sets: EvalSets, rankings: dict[str, ModelRankings], models: dict[str, str], path: Path
) -> Path:
    """Two text and two image queries, answered by each evaluated model in turn."""
    path_of = dict(zip(sets.corpus["id"], sets.corpus["path"], strict=True))
    tags = sets.text_qrels.loc[sets.text_qrels["origin"] == "tag", "query"].drop_duplicates()
    texts = tags.sample(min(2, len(tags)), random_state=0).tolist()
    images = list(next(iter(rankings.values())).image)[:2]

    def shown(ranking: list[str]) -> list[tuple[str, None]]:
        return [(path_of[image_id], None) for image_id in ranking[:6]]

    examples = []
    for label in models:
        examples += [ExampleQuery(f'{label}: "{t}"', None, shown(rankings[label].text[t])) for t in texts]
        examples += [ExampleQuery(label, path_of[i], shown(rankings[label].image[i])) for i in images]
    return result_grid(examples, path)


def _log_to_mlflow(settings: Settings, report: EvaluationReport, challenger: str | None) -> str | None:
    """Metrics of every model, prefixed by its label, and the plots, on the challenger's training run."""
    if challenger is None:
        return None
    client = registry.connect(settings)
    version = client.get_model_version(settings.model.registered_name, challenger.rsplit("/", 1)[1])
    flat = {
        f"eval.{label}.{query_type}.{name}".replace(" ", "_").replace("/", "."): value
        for label, by_type in report.results.items()
        for query_type, metrics in by_type.items()
        for name, value in metrics.items()
        if value is not None and math.isfinite(value)
    }
    with mlflow.start_run(run_id=version.run_id):
        mlflow.log_metrics(flat)
        registry.log_artifacts([Path(p) for p in report.plots], "evaluation")
    return version.run_id


@dataclass(slots=True)
class PromotionResult:
    decision: Decision
    challenger: str | None
    champion: str | None


def promotion_step(settings: Settings) -> PromotionResult:
    """Apply the rule to the last evaluation; move the champion alias when it says so; tag the decision."""
    report = EvaluationReport.read(settings.evaluation_dir)
    config = settings.evaluation
    rule = PromotionRule(
        config.primary_metric, config.promotion_margin, tuple(config.guarded_metrics), config.guard_tolerance
    )
    challenger, champion = report.models.get("challenger"), report.models.get("champion")
    if challenger is None:
        return PromotionResult(Decision(False, "no challenger registered"), None, champion)
    decision = decide(
        _metrics_of(report, "challenger"), _metrics_of(report, "champion") if champion else None, rule
    )
    client = registry.connect(settings)
    name, version = settings.model.registered_name, challenger.rsplit("/", 1)[1]
    if challenger == champion:
        decision = Decision(False, "the challenger already is the champion")
    client.set_model_version_tag(
        name, version, "promotion.decision", "promoted" if decision.promote else "kept"
    )
    client.set_model_version_tag(name, version, "promotion.reason", decision.reason)
    if decision.promote:
        client.set_registered_model_alias(name, registry.CHAMPION, version)
    return PromotionResult(decision, challenger, champion)


def _metrics_of(report: EvaluationReport, label: str) -> dict[str, float]:
    return {
        f"{query_type}.{name}": value
        for query_type, metrics in report.results.get(label, {}).items()
        for name, value in metrics.items()
    }
