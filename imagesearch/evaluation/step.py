"""The evaluation steps: what `imagesearch evaluate sets|run|promote`, the DVC stage `eval_sets` and the
assets `eval_sets`, `offline_evaluation` and `model_promotion` call.

eval_sets_step: held-out evaluation sets from the catalog's test split (+ held-out judgments), DVC-versioned.
evaluation_step: every model of interest on those sets (exact search), the served index against exact
search, a metric table, plots, and MLflow metrics on the challenger's run.
promotion_step: the promotion rule applied to the last evaluation, recorded in the registry.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imagesearch.catalog.build import read_catalog
from imagesearch.common.plots import ExampleQuery, metric_bars, recall_curves, result_grid
from imagesearch.common.versioning import StageVersion
from imagesearch.common.workspace import init_workspace
from imagesearch.embeddings.backbone_cache import cache_folder, encode_files, file_features
from imagesearch.evaluation.modes import file_name_titles, mode_results
from imagesearch.evaluation.promotion import Decision, OnlineRule, PromotionRule, decide, decide_online
from imagesearch.evaluation.ranking import (
    TEST_SPLIT,
    ModelRankings,
    guard_differences,
    metrics_table,
    rank_corpus,
    recall_curve,
    score_rankings,
)
from imagesearch.evaluation.report import EvaluationReport
from imagesearch.evaluation.served import rankings_through_served_index, served_index_check
from imagesearch.evaluation.sets import (
    IMAGE_TO_IMAGE,
    TEXT_TO_IMAGE,
    EvalSets,
    build_eval_sets,
    outside_split,
)
from imagesearch.feedback.step import last_experiment
from imagesearch.models import registry
from imagesearch.models.builders import build_trained_encoder
from imagesearch.models.encoders import Encoder
from imagesearch.models.routing import route_collection
from imagesearch.settings import Settings
from imagesearch.training_data.examples import leakage_problems

EVAL_SETS_STAGE = "eval_sets"


PRETRAINED = "pretrained features"


CURVE_KS = [1, 2, 5, 10, 20, 50, 100]


@dataclass(slots=True)
class EvalSetsResult:
    summary: dict[str, int]
    version: StageVersion | None


def eval_sets_step(settings: Settings, *, record: bool = True) -> EvalSetsResult:
    repo = init_workspace(settings) if record else None
    judged_path = settings.judgments_eval_path
    sets = build_eval_sets(
        read_catalog(settings.catalog_path),
        pd.read_parquet(judged_path) if judged_path.exists() else None,
        max_image_queries=settings.evaluation.max_image_queries,
        tag_max_share=settings.evaluation.tag_max_share,
    )
    sets.write(settings.evaluation_dir)
    summary = sets.summary()
    outside = outside_split(settings, "test")
    shutil.rmtree(settings.ood_evaluation_dir, ignore_errors=True)
    settings.ood_evaluation_dir.mkdir(parents=True)
    # which collections the folder holds (also keeps it a DVC output when there are none)
    (settings.ood_evaluation_dir / "collections.json").write_text(json.dumps(sorted(outside)))
    for name, collection in outside.items():
        collection.write(settings.ood_evaluation_dir / name)
        summary |= {f"{name}:{key}": value for key, value in collection.summary().items()}
    version = repo.record(EVAL_SETS_STAGE, f"evaluation sets: {summary}") if repo else None
    return EvalSetsResult(summary, version)


def evaluation_leakage(settings: Settings) -> list[str]:
    """Evaluation images or held-out judged queries found in the training examples (empty: held out)."""
    sets = EvalSets.read(settings.evaluation_dir)
    judged = set(sets.text_qrels.loc[sets.text_qrels["origin"] == "judgment", "query"])
    examples = pd.read_parquet(settings.examples_path)
    return leakage_problems(examples, read_catalog(settings.catalog_path), eval_queries=judged)


def read_outside_sets(settings: Settings) -> dict[str, EvalSets]:
    """The out-of-domain test sets written by `eval_sets_step`, by collection name."""
    return {
        name: EvalSets.read(settings.ood_evaluation_dir / name)
        for name in settings.evaluation.ood_collections
    }


def evaluation_step(
    settings: Settings,
    *,
    models: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Evaluate the challenger, the champion, v0 and raw pretrained features on the held-out sets:
    the test split, and each out-of-domain collection (query types prefixed ``<collection>:``).
    `log` hears which model is being evaluated (minutes each on a CPU)."""
    sets = EvalSets.read(settings.evaluation_dir)
    outside = read_outside_sets(settings)
    models = models or default_models(settings)
    results, curves, rankings, everywhere, seen = {}, {}, {}, {}, {}
    for label, reference in models.items():
        if reference in seen:  # e.g. the champion is still v0: evaluated once, reported under both labels
            for by_label in (results, curves, rankings, everywhere):
                by_label[label] = by_label[seen[reference]]
            continue
        seen[reference] = label
        images = len(sets.corpus) + sum(len(c.corpus) for c in outside.values())
        if log:
            log(f"evaluating {label} ({reference}) on {images} test images")
        everywhere[label], results[label] = evaluate_everywhere(
            registry.load_encoder(reference, settings),
            sets,
            outside,
            modes=label in ("champion", "challenger"),
            features=cache_folder(settings),
        )
        rankings[label] = everywhere[label][TEST_SPLIT]
        results |= _split_modes(label, results[label])
        curves[label] = _curves(sets, rankings[label])
    served = rankings_through_served_index(settings, sets, models, rankings)
    if served is not None:
        label, rankings[label] = served
        results[label] = score_rankings(sets, rankings[label])
    if log:
        log("evaluating raw pretrained features")
    raw = _pretrained_features(settings, sets.corpus["path"].tolist())
    rankings[PRETRAINED] = rank_corpus(sets, raw, None)
    results[PRETRAINED] = score_rankings(sets, rankings[PRETRAINED]) | pretrained_outside(settings, outside)
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
        guards=_guards(settings, models, everywhere, {TEST_SPLIT: sets, **outside}),
    )
    report.mlflow_run_id = registry.log_evaluation(
        settings, report.results, report.plots, models.get("challenger")
    )
    report.write(folder)
    return report


def evaluate_everywhere(
    encoder: Encoder,
    sets: EvalSets,
    outside: dict[str, EvalSets],
    *,
    modes: bool = False,
    features: Path | None = None,
) -> tuple[dict[str, ModelRankings], dict[str, dict[str, float]]]:
    """Rankings of the test split (key `TEST_SPLIT`) and of every out-of-domain collection (its
    name), and metrics on each; with `modes`, also the keyword and hybrid rankings' metrics (by mode,
    under ``mode:<name>``). `features`: the backbone cache's folder (None: no cache)."""
    rankings, results = evaluate_encoder(encoder, sets, features)
    everywhere = {TEST_SPLIT: rankings}
    by_mode = mode_results(sets, rankings, file_name_titles(sets)) if modes else {}
    for name, collection in outside.items():
        everywhere[name], outside_results = evaluate_encoder(encoder, collection, features)
        results |= _prefixed(name, outside_results)
        if modes:
            found = mode_results(collection, everywhere[name], file_name_titles(collection))
            for mode, metrics in found.items():
                by_mode[mode] |= _prefixed(name, metrics)
    results |= {f"mode:{mode}": metrics for mode, metrics in by_mode.items()}
    return everywhere, results


def _guards(
    settings: Settings,
    models: dict[str, str],
    everywhere: dict[str, dict[str, ModelRankings]],
    sets: dict[str, EvalSets],
) -> dict[str, dict[str, float]]:
    """The challenger's difference from the champion on every guarded metric, paired by query with
    its 95% bootstrap interval: what the gate's tolerance can and cannot tell apart on each set."""
    challenger, champion = models.get("challenger"), models.get("champion")
    if challenger is None or champion is None or challenger == champion:
        return {}
    guarded = settings.evaluation.guarded_metrics
    return guard_differences(guarded, everywhere["challenger"], everywhere["champion"], sets)


def _split_modes(label: str, results: dict) -> dict[str, dict[str, dict[str, float]]]:
    """Mode results moved out of a model's results into rows of their own: "<label> keyword mode"."""
    nested = {key: results.pop(key) for key in [k for k in results if k.startswith("mode:")]}
    return {f"{label} {key.removeprefix('mode:')} mode": metrics for key, metrics in nested.items()}


def pretrained_outside(settings: Settings, outside: dict[str, EvalSets]) -> dict[str, dict[str, float]]:
    """Raw pretrained features (image->image only) on every out-of-domain collection."""
    results = {}
    for name, collection in outside.items():
        raw = _pretrained_features(settings, collection.corpus["path"].tolist())
        results |= _prefixed(name, score_rankings(collection, rank_corpus(collection, raw, None)))
    return results


def pretrained_results(settings: Settings, sets: EvalSets, outside: dict[str, EvalSets]) -> dict:
    raw = _pretrained_features(settings, sets.corpus["path"].tolist())
    return score_rankings(sets, rank_corpus(sets, raw, None)) | pretrained_outside(settings, outside)


def _prefixed(collection: str, results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {f"{collection}:{query_type}": metrics for query_type, metrics in results.items()}


def evaluate_encoder(
    encoder: Encoder, sets: EvalSets, features: Path | None = None
) -> tuple[ModelRankings, dict[str, dict[str, float]]]:
    """Embed the test corpus as an index of it would hold it (routed, for a routing encoder), rank it
    for every query by exact search, score the rankings."""
    vectors, _ = route_collection(encoder, encode_files(encoder, sets.corpus["path"].tolist(), features))
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


def _curves(sets: EvalSets, rankings: ModelRankings) -> dict[str, list[float]]:
    out = {IMAGE_TO_IMAGE: recall_curve(sets, rankings.image, "query_image_id", CURVE_KS)}
    if rankings.text:
        out[TEXT_TO_IMAGE] = recall_curve(sets, rankings.text, "query", CURVE_KS)
    return out


def _pretrained_features(settings: Settings, paths: list[str]) -> np.ndarray:
    """The image backbone's pooled ImageNet features, before any head: the image->image floor."""
    bare = {"head": "two_tower", "raw_feature_weight": 0.0}  # whatever the model's
    plain = settings.model.model_copy(update=bare)
    raw = file_features(build_trained_encoder(plain), paths, cache_folder(settings))
    return raw / np.linalg.norm(raw, axis=1, keepdims=True).clip(min=1e-12)


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


@dataclass(slots=True)
class PromotionResult:
    decision: Decision
    challenger: str | None
    champion: str | None


def promotion_step(settings: Settings) -> PromotionResult:
    """Apply the rule to the last evaluation; move the champion alias when it says so; tag the decision."""
    report = EvaluationReport.read(settings.evaluation_dir)
    rule = PromotionRule.from_settings(settings.evaluation)
    challenger, champion = report.models.get("challenger"), report.models.get("champion")
    if challenger is None:
        return PromotionResult(Decision(False, "no challenger registered"), None, champion)
    decision = decide(
        _metrics_of(report, "challenger"),
        _metrics_of(report, "champion") if champion else None,
        rule,
        report.guards,
    )
    if challenger == champion:  # nothing to decide, and its promotion record must stay as it is
        return PromotionResult(
            Decision(False, "the challenger already is the champion"), challenger, champion
        )
    rolled_back = registry.rollback_reason(settings, challenger)
    if rolled_back:
        decision = Decision(False, f"rolled back after an earlier promotion: {rolled_back}")
        return PromotionResult(decision, challenger, champion)
    tags = {}
    if settings.evaluation.online_stage:
        evidence = last_experiment(settings, challenger)
        decision = decide_online(decision, evidence, OnlineRule.from_settings(settings.evaluation))
        tags = evidence.as_tags() if evidence else {}
    registry.record_promotion(
        settings, challenger, promote=decision.promote, reason=decision.reason, tags=tags
    )
    return PromotionResult(decision, challenger, champion)


def _metrics_of(report: EvaluationReport, label: str) -> dict[str, float]:
    return {
        f"{query_type}.{name}": value
        for query_type, metrics in report.results.get(label, {}).items()
        for name, value in metrics.items()
    }
