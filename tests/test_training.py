"""Training on tiny real images: the losses, the Dagster chain from catalog to a registered challenger
(one test per stage, on one trained workspace), and resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from assets.catalog import image_catalog
from assets.embeddings import image_embeddings
from assets.evaluation import (
    ablation_study,
    eval_sets,
    evaluation_is_held_out,
    model_promotion,
    offline_evaluation,
    served_index_is_sound,
)
from assets.index import search_index
from assets.training import trained_model, training_beat_untrained_heads
from assets.training_data import no_evaluation_leakage, source_assets, training_examples
from dagster_project.resources import WorkspaceResource
from imagesearch.catalog.build import read_catalog
from imagesearch.common.images import DEFAULT_LIMITS
from imagesearch.evaluation.report import EvaluationReport
from imagesearch.evaluation.step import evaluation_step
from imagesearch.index.store import load_index
from imagesearch.models.builders import build_trained_encoder
from imagesearch.models.encoders import Encoder
from imagesearch.models.registry import CHALLENGER, CHAMPION, alias_version, connect, load_encoder
from imagesearch.models.routing import route_collection
from imagesearch.models.towers import set_interpolation
from imagesearch.settings import ModelSettings, Settings, TrainingSettings
from imagesearch.training.loop import fingerprint, train_towers
from imagesearch.training.losses import info_nce, triplet
from imagesearch.training.selection import bridge_score
from imagesearch.training.step import model_for_training
from imagesearch.training.validation import ValidationSet
from imagesearch.training_data.examples import EXAMPLE_COLUMNS, augmentation_pairs, mix_examples, tag_pairs
from tests.conftest import IN_PROCESS, make_training_folder, write_outside_collection

# --- losses --------------------------------------------------------------------------------
E = math.e


def unit(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_info_nce_of_orthogonal_pairs():
    # logits = I: each row's cross-entropy is -log(e / (e + 1)), in both directions
    loss = info_nce(unit([1, 0], [0, 1]), unit([1, 0], [0, 1]), 1.0)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), abs=1e-6)


def test_info_nce_is_symmetric_only_when_the_logits_are():
    anchors, positives = unit([1, 0], [0, 1]), unit([0.6, 0.8], [0.0, 1.0])
    # logits: [[0.6, 0], [0.8, 1]]
    forward = [-math.log(E**0.6 / (E**0.6 + 1)), -math.log(E / (E**0.8 + E))]  # rows
    backward = [-math.log(E**0.6 / (E**0.6 + E**0.8)), -math.log(E / (1 + E))]  # columns
    expected = (sum(forward) / 2 + sum(backward) / 2) / 2
    assert info_nce(anchors, positives, 1.0).item() == pytest.approx(expected, abs=1e-6)


def test_scale_sharpens_the_softmax():
    loss = info_nce(unit([1, 0], [0, 1]), unit([1, 0], [0, 1]), 10.0)
    assert loss.item() == pytest.approx(math.log(1 + E**-10), abs=1e-6)


def test_extra_negative_joins_the_forward_direction_only():
    anchors = positives = unit([1, 0], [0, 1])
    negative = unit([1, 0])  # identical to anchor 0: as similar as its positive
    forward = [-math.log(E / (E + 1 + E)), -math.log(E / (1 + E + 1))]
    backward = [math.log(1 + 1 / E)] * 2
    expected = (sum(forward) / 2 + sum(backward) / 2) / 2
    loss = info_nce(anchors, positives, 1.0, extra_negatives=negative)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    excluded = torch.tensor([[True], [False]])  # row 0 may not treat its own image as a negative
    forward[0] = math.log(1 + 1 / E)
    expected = (sum(forward) / 2 + sum(backward) / 2) / 2
    loss = info_nce(anchors, positives, 1.0, extra_negatives=negative, extra_excluded=excluded)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_same_group_spreads_the_target():
    anchors = positives = unit([1, 0], [0, 1])
    same = torch.tensor([[False, True], [True, False]])
    # each row: target (0.5, 0.5) over logits (1, 0) -> -0.5 log p1 - 0.5 log p0
    p_own, p_other = E / (E + 1), 1 / (E + 1)
    expected = -0.5 * math.log(p_own) - 0.5 * math.log(p_other)
    assert info_nce(anchors, positives, 1.0, same=same).item() == pytest.approx(expected, abs=1e-6)


def test_weights_make_a_weighted_mean():
    anchors, positives = unit([1, 0], [0, 1]), unit([0.6, 0.8], [0.0, 1.0])
    weights = torch.tensor([1.0, 0.0])
    rows = info_nce(anchors[:1], positives[:1], 1.0)  # a single pair has loss 0 (one candidate)
    assert rows.item() == pytest.approx(0.0, abs=1e-7)
    weighted = info_nce(anchors, positives, 1.0, weights=weights)
    forward0 = -math.log(E**0.6 / (E**0.6 + 1))
    backward0 = -math.log(E**0.6 / (E**0.6 + E**0.8))
    assert weighted.item() == pytest.approx((forward0 + backward0) / 2, abs=1e-6)


def test_triplet_uses_the_hardest_negative_and_the_margin():
    anchors, positives = unit([1, 0], [0, 1]), unit([0.6, 0.8], [0.0, 1.0])
    # row 0: positive 0.6, hardest negative 0.0 -> relu(0.2 - 0.6 + 0) = 0
    # row 1: positive 1.0, hardest negative 0.8 -> relu(0.2 - 1.0 + 0.8) = 0 ... at the margin
    assert triplet(anchors, positives, margin=0.2).item() == pytest.approx(0.0, abs=1e-6)
    # margin 0.5: row 0 -> 0, row 1 -> 0.3
    assert triplet(anchors, positives, margin=0.5).item() == pytest.approx(0.15, abs=1e-6)
    negative = unit([0.8, 0.6])  # row 0: hardest is now 0.8 -> relu(0.5 - 0.6 + 0.8) = 0.7
    loss = triplet(anchors, positives, margin=0.5, extra_negatives=negative)
    assert loss.item() == pytest.approx((0.7 + 0.3) / 2, abs=1e-6)


# --- training --------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("dvc_available")
ALL_SHARDS = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "f"}
SMALL_TRAINING = {
    "IMAGESEARCH_TRAINING__FROZEN_EPOCHS": "3",
    "IMAGESEARCH_TRAINING__UNFROZEN_EPOCHS": "1",
    "IMAGESEARCH_TRAINING__BATCH_SIZE": "16",
    "IMAGESEARCH_TRAINING_DATA__CLASSIFIER_THRESHOLD": "0.01",
    "IMAGESEARCH_TRAINING_DATA__SIMULATED_QUERIES": "3",
    "IMAGESEARCH_TRAINING_DATA__SIMULATED_SESSIONS": "10",
}


def metadata(result, key: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == key]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def write_judgments(catalog: pd.DataFrame, path: Path) -> Path:
    train = catalog[catalog["split"] == "train"]
    # "some food" falls on the training side of the query hash, "animals" on the evaluation side
    rows = [
        {"query_text": query, "image_id": row.id, "grade": 3 if row.category == category else 0}
        for query, category in [("some food", "food"), ("animals", "animals")]
        for row in train.itertuples()
    ]
    rows.append({"query_text": "animals", "image_id": "not-an-id", "grade": 3})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@dataclass
class TrainedWorkspace:
    resources: dict
    settings: Settings
    result: dg.ExecuteInProcessResult
    version: str


@pytest.fixture(scope="module", autouse=True)
def outside_collection_on():
    """This module's workspaces evaluate (and select models) on a small out-of-domain collection."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("IMAGESEARCH_EVALUATION__OOD_COLLECTIONS", '["fashion-mnist"]')
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory, saved_encoder) -> TrainedWorkspace:
    """catalog -> embeddings -> index -> every source -> mix -> a trained, registered challenger, once
    for the module: each test below checks one stage, so a failure names its stage."""
    root = tmp_path_factory.mktemp("chain")
    workspace = WorkspaceResource(
        home=str(root / "ws"), image_dirs=[str(make_training_folder(root / "images"))]
    )
    resources = {"workspace": workspace, "ray_cluster": IN_PROCESS}
    model = {"config": {"model": str(saved_encoder)}}
    with pytest.MonkeyPatch.context() as env:
        for key, value in SMALL_TRAINING.items():
            env.setenv(key, value)
        write_outside_collection(workspace.settings())
        indexed = dg.materialize(
            [image_catalog, image_embeddings, search_index],
            resources=resources,
            run_config={"ops": {"image_embeddings": model, "search_index": model}},
            tags=ALL_SHARDS,
        )
        assert indexed.success
        judgments = write_judgments(read_catalog(workspace.settings().catalog_path), root / "judgments.csv")
        env.setenv("IMAGESEARCH_TRAINING_DATA__JUDGMENTS_PATH", str(judgments))
        chain = [
            *source_assets,
            training_examples,
            no_evaluation_leakage,
            trained_model,
            training_beat_untrained_heads,
        ]
        result = dg.materialize(chain, resources=resources)
        assert result.success
        settings = workspace.settings()
    connect(settings)
    return TrainedWorkspace(resources, settings, result, metadata(result, "trained_model")["model_version"])


@pytest.fixture(scope="module")
def evaluated(trained) -> dg.ExecuteInProcessResult:
    chain = [eval_sets, offline_evaluation, served_index_is_sound, evaluation_is_held_out, model_promotion]
    result = dg.materialize(chain, resources=trained.resources)
    assert result.success
    return result


def test_every_source_writes_its_examples_and_the_mix_holds_them_all(trained):
    for source in ["augmentation", "classifier", "tags", "judgments", "clicks"]:
        frame = pd.read_parquet(trained.settings.source_path(source))
        assert list(frame.columns) == EXAMPLE_COLUMNS, source
        assert len(frame) > 0 and set(frame["source"]) == {source}
    judged = metadata(trained.result, "judgment_pairs")["report"]
    assert judged["rejected_by_reason"] == {"unknown image_id": 1}
    assert judged["queries"] == {"train": 1, "eval": 1}
    assert set(pd.read_parquet(trained.settings.source_path("judgments"))["positive_text"]) == {"some food"}
    assert metadata(trained.result, "click_pairs")["report"]["simulated_clicks_written"] > 0
    assert set(metadata(trained.result, "training_examples")["by_source"]) == {
        "augmentation",
        "classifier",
        "tags",
        "judgments",
        "clicks",
    }
    leakage = [
        c for c in trained.result.get_asset_check_evaluations() if c.check_name == "no_evaluation_leakage"
    ]
    assert leakage[0].passed


def test_training_registers_a_challenger_with_its_run_params_metrics_and_plots(trained):
    settings = trained.settings
    history = metadata(trained.result, "trained_model")["history"]
    assert len(history) == 5 and history[-1]["loss"] < history[1]["loss"]
    bridge = history[0]["bridge_top_k"], history[0]["bridge_temperature"]  # chosen before training
    assert bridge[0] in settings.training.bridge_top_k_grid
    assert bridge[1] in settings.training.bridge_temperature_grid
    spec = load_encoder(f"models:/{settings.model.registered_name}/{trained.version}", settings).spec
    assert (spec.zeroshot_top_k, spec.bridge_temperature) == bridge
    assert alias_version(settings, CHALLENGER) == trained.version
    client = MlflowClient()
    run = client.get_run(metadata(trained.result, "trained_model")["mlflow_run_id"])
    assert run.data.params["training.frozen_epochs"] == "3"
    assert "dvc.examples.parquet" in run.data.tags and run.data.tags["git_commit"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/training_curves.png", "plots/example_results.png"}
    saved = json.loads(settings.trained_metrics_path.read_text())
    assert saved["model_version"] == trained.version
    # routed per collection (the default): the stored raw block stays plain, the router reads it;
    # an index of a collection outside holds the kind chosen on the outside collections' val rows
    assert saved["outside_raw_transform"] in settings.training.raw_transform_grid
    assert saved["outside_raw_feature_weight"] == spec.outside_raw_weight
    assert spec.outside_raw_weight in settings.training.raw_weight_grid
    assert spec.outside_raw_transform == saved["outside_raw_transform"] and spec.raw_transform == "plain"
    chosen = metadata(trained.result, "trained_model")["chosen_on_validation"]
    assert chosen["outside_raw_transform"] == spec.outside_raw_transform and chosen["interpolation"] in (
        [*settings.training.interpolation_grid, 1.0]
    )
    # every candidate's val score is kept where people look: metrics.json, the asset, the MLflow run
    candidates = saved["choice_scores"]["outside_raw"]
    kept = f"{spec.outside_raw_transform}_x{spec.outside_raw_weight:g}"
    assert len(candidates) > 1 and candidates[kept] == max(candidates.values())
    bridges = saved["choice_scores"]["bridge"]  # chosen before training, on the outside val rows alone
    assert bridges[f"top{bridge[0]}_T{bridge[1]:g}"] == max(bridges.values())
    assert metadata(trained.result, "trained_model")["candidates_on_validation"] == saved["choice_scores"]
    assert f"choice.outside_raw.{kept}" in run.data.metrics
    assert "val_title_to_image_recall_at_10" in history[0]  # the val titles are scored as the test's


def test_evaluation_is_held_out_logged_and_its_promotion_decision_recorded(trained, evaluated):
    settings = trained.settings
    sets = metadata(evaluated, "eval_sets")
    assert sets["corpus_images"] > 0 and sets["image_queries"] > 0 and "dvc_md5" in sets
    corpus = pd.read_parquet(settings.evaluation_dir / "corpus.parquet")
    assert set(read_catalog(settings.catalog_path).set_index("id").loc[corpus["id"], "split"]) == {"test"}
    report = metadata(evaluated, "offline_evaluation")
    assert set(report["models"]) == {"challenger", "champion", "v0", "pretrained features"}
    assert "ndcg_at_10" in report["table"] and "image_to_image" in report["table"]
    assert all(c.passed for c in evaluated.get_asset_check_evaluations())
    client = MlflowClient()
    assert "eval.challenger.image_to_image.ndcg_at_10" in client.get_run(report["mlflow_run_id"]).data.metrics
    assert {a.path for a in client.list_artifacts(report["mlflow_run_id"], "evaluation")} == {
        "evaluation/ndcg_at_10.png",
        "evaluation/recall_at_k.png",
        "evaluation/examples.png",
    }
    guards = EvaluationReport.read(settings.evaluation_dir).guards  # challenger vs champion, per query
    evaluated_sets = {"", "fashion-mnist"}  # the test split and the one collection written here
    expected = {m for m in settings.evaluation.guarded_metrics if m.rpartition(":")[0] in evaluated_sets}
    assert set(guards) == expected and "fashion-mnist:text_to_image.ndcg_at_10" in expected
    assert all(g["low"] <= g["difference"] <= g["high"] and g["queries"] > 0 for g in guards.values())
    promoted = metadata(evaluated, "model_promotion")
    tags = client.get_model_version(settings.model.registered_name, trained.version).tags
    assert tags["promotion.decision"] == ("promoted" if promoted["promoted"] else "kept")
    assert tags["promotion.reason"] == promoted["reason"]
    assert (alias_version(settings, CHAMPION) == trained.version) is promoted["promoted"]


def test_the_served_model_through_a_flat_index_ranks_as_exact_search_does(trained, evaluated):
    served_model = load_index(trained.settings.search_index_dir).manifest.model
    served = evaluation_step(trained.settings, models={"served": served_model})
    in_domain = {k: v for k, v in served.results["served"].items() if ":" not in k}
    assert served.results["served via index"] == in_domain
    assert any(k.startswith("fashion-mnist:") for k in served.results["served"])


def test_ablation_trains_one_model_per_variant_in_nested_runs(trained, evaluated, monkeypatch):
    monkeypatch.setenv("IMAGESEARCH_ABLATION__VARIANTS", '["tags", "two_tower (round one)"]')
    monkeypatch.setenv("IMAGESEARCH_ABLATION__FROZEN_EPOCHS", "1")
    ablation = metadata(dg.materialize([ablation_study], resources=trained.resources), "ablation_study")
    assert ablation["variants"] == 2 and "t2i" in ablation["table"]
    client = MlflowClient()
    nested = client.search_runs(
        [client.get_run(ablation["mlflow_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{ablation['mlflow_run_id']}'",
    )
    assert sorted(r.data.params["variant"] for r in nested) == ["tags", "two_tower (round one)"]


def test_a_rule_any_challenger_passes_moves_the_alias_once(trained, evaluated, monkeypatch):
    promoted_before = metadata(evaluated, "model_promotion")["promoted"]
    monkeypatch.setenv("IMAGESEARCH_EVALUATION__PROMOTION_MARGIN", "-1")
    monkeypatch.setenv("IMAGESEARCH_EVALUATION__GUARD_TOLERANCE", "1")
    monkeypatch.setenv("IMAGESEARCH_EVALUATION__ONLINE_STAGE", "false")  # the offline gate alone
    for expected in (True, False):
        again = dg.materialize([offline_evaluation, model_promotion], resources=trained.resources)
        assert metadata(again, "model_promotion")["promoted"] is (expected and not promoted_before)
        assert alias_version(trained.settings, CHAMPION) == trained.version


def test_a_val_image_leaking_into_a_source_stops_the_chain_before_training(trained):
    settings = trained.settings
    path = settings.source_path("augmentation")
    original = pd.read_parquet(path)
    leaked_rows = original.copy()
    leaked_rows.loc[0, "positive_id"] = (
        read_catalog(settings.catalog_path).query("split == 'val'")["id"].iloc[0]
    )
    leaked_rows.to_parquet(path, index=False)
    try:
        leaked = dg.materialize(
            [training_examples, no_evaluation_leakage, trained_model],
            resources=trained.resources,
            raise_on_error=False,
        )
    finally:
        original.to_parquet(path, index=False)
    assert not leaked.success
    check = leaked.get_asset_check_evaluations()[0]
    assert not check.passed and "non-train images" in str(check.metadata["problems"].value)
    assert alias_version(settings, CHALLENGER) == trained.version  # nothing new was trained


def tiny_training_data(tmp_path: Path, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The catalog of `folder` and a mix of augmentation and tag examples over it."""
    from imagesearch.catalog.build import build_catalog
    from imagesearch.settings import CatalogSettings, SourceSettings

    catalog_path = tmp_path / "catalog.parquet"
    build_catalog(
        [SourceSettings(name="tiny", path=folder)],
        CatalogSettings(workers=1),
        catalog_path=catalog_path,
        quarantine_path=tmp_path / "quarantine.parquet",
        progress=False,
    )
    catalog = read_catalog(catalog_path)
    examples = mix_examples(
        {
            "augmentation": augmentation_pairs(catalog, per_image=1),
            "tags": tag_pairs(catalog, max_share=0.5, same_tag_positives=2, seed=0),
        },
        {"augmentation": 1.0, "tags": 1.0},
        seed=0,
    )
    return catalog, examples


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, training_folder):
    catalog, examples = tiny_training_data(tmp_path, training_folder)
    settings = TrainingSettings(frozen_epochs=2, unfrozen_epochs=2, batch_size=16, unfrozen_rows_per_epoch=32)

    class Interrupted(Exception):
        pass

    def stop_after_two(epoch: int, metrics: dict) -> None:
        if epoch == 3:
            raise Interrupted

    def train(work_dir: Path, callback=None):
        encoder = build_trained_encoder(ModelSettings(head="two_tower", embed_dim=32, raw_feature_weight=0))
        kwargs = {"work_dir": work_dir, "limits": DEFAULT_LIMITS, "on_epoch": callback, "progress": False}
        return encoder, train_towers(encoder, examples, catalog, settings, **kwargs)

    with pytest.raises(Interrupted):
        train(tmp_path / "work", stop_after_two)
    encoder, resumed = train(tmp_path / "work")
    assert resumed.resumed_from_epoch == 4  # epochs 1-3 were checkpointed; only epoch 4 ran again
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2, 3, 4]
    _, uninterrupted = train(tmp_path / "other")
    assert uninterrupted.resumed_from_epoch == 0
    assert resumed.history[-1]["loss"] == pytest.approx(uninterrupted.history[-1]["loss"], rel=1e-4)
    assert encoder.encode_texts(["a noisy cat"]).shape == (1, 32)


def test_the_training_device_setting_is_the_one_training_uses():
    settings = Settings(model={"device": "cuda"}, training={"device": "cpu"})
    assert model_for_training(settings).device == "cpu"
    assert model_for_training(settings).embed_dim == settings.model.embed_dim


def test_validation_drops_images_that_could_not_be_decoded():
    validation = ValidationSet(
        ["a", "b", "c"],
        ["/a", "/b", "/c"],
        ["x", "x", "y"],
        ["tag one", "tag two"],
        [{"a", "b"}, {"b"}],
        ["title of b", "title of c"],
        [{"b"}, {"c"}],
    )
    kept, mask = validation.without({"b"})
    assert mask.tolist() == [True, False, True]
    assert kept.image_ids == ["a", "c"] and kept.categories == ["x", "y"]
    assert kept.query_texts == ["tag one"] and kept.text_relevant == [{"a"}]  # "tag two" had only b
    assert kept.title_texts == ["title of c"] and kept.title_relevant == [{"c"}]
    assert kept.texts() == ["tag one", "title of c"]


def test_a_routed_models_bridge_is_chosen_on_the_outside_collections_alone():
    """The bridge is what a routed model serves to collections outside, and only to them."""
    narrow = {"val_text_to_image_recall_at_10": 0.30, "val_gcompris_text_to_image_ndcg_at_10": 0.30}
    wide = {"val_text_to_image_recall_at_10": 0.10, "val_gcompris_text_to_image_ndcg_at_10": 0.31}
    assert bridge_score(narrow, routed=False) > bridge_score(wide, routed=False)  # the mean of all
    assert bridge_score(wide, routed=True) > bridge_score(narrow, routed=True)  # outside alone
    in_domain_only = {"val_text_to_image_recall_at_10": 0.2}
    assert bridge_score(in_domain_only, routed=True) == 0.2  # no outside collection: every metric


def test_validation_title_queries_are_built_as_the_test_splits_are():
    """Known-item title queries of the val split: author tokens dropped, titles shared by two val
    images left out, test and train titles never used."""
    catalog = pd.DataFrame(
        {
            "id": [f"i{n}" for n in range(8)],
            "split": ["val", "val", "val", "val", "train", "train", "test", "val"],
            "category": ["fruit", "fruit", "tools", "tools", "animals", "animals", "fruit", "tools"],
            "title": [
                "red apple jo smith",  # an author who signs in three categories
                "green pear",
                "hammer jo smith",
                "saw",
                "lion jo smith",
                "saw",
                "banana",
                "saw",
            ],
            "tags": [["apple"], ["pear"], ["hammer"], ["saw"], ["lion"], ["saw"], ["banana"], ["saw"]],
            "path": [f"/{n}.png" for n in range(8)],
        }
    )
    validation = ValidationSet.from_catalog(catalog)
    titles = dict(zip(validation.title_texts, validation.title_relevant, strict=True))
    assert titles == {"red apple": {"i0"}, "green pear": {"i1"}, "hammer": {"i2"}}


def test_the_frozen_trunk_runs_on_onnx_runtime_with_torchs_features():
    """The feature cache's views go through ONNX Runtime on a CPU: the same pooled features as torch."""
    from imagesearch.training.features import split_backbone, trunk_runner
    from tests.conftest import noise_image

    encoder = build_trained_encoder(ModelSettings(head="two_tower", embed_dim=16, raw_feature_weight=0))
    trunk, _ = split_backbone(encoder.image_model.backbone, 0)
    pixels = encoder.preprocess([noise_image(seed, (90, 70)) for seed in range(3)])
    got = trunk_runner(encoder, trunk)(pixels)
    with torch.inference_mode():
        want = trunk(pixels)
    assert got.shape == want.shape == (3, 1280)
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 0.9999
    staged, _ = split_backbone(encoder.image_model.backbone, 1)  # a trunk under trainable stages: torch
    with torch.inference_mode():
        unpooled = staged(pixels)
    assert torch.allclose(trunk_runner(encoder, staged)(pixels), unpooled, atol=1e-4)


def train_anchored_briefly(
    tmp_path: Path,
    catalog: pd.DataFrame,
    examples: pd.DataFrame,
    name: str,
    epochs: int,
    model: ModelSettings | None = None,
    **overrides,
) -> tuple[Encoder, list[dict]]:
    """An anchored model trained a few epochs at a high rate, the last epoch kept, nothing chosen on
    validation: what a test of one training term needs."""
    settings = TrainingSettings(
        frozen_epochs=epochs,
        batch_size=16,
        learning_rate=0.005,
        selection="last",
        interpolation_grid=[1.0],
        bridge_top_k_grid=[],
        bridge_temperature_grid=[],
        raw_weight_grid=[],
        **overrides,
    )
    encoder = build_trained_encoder(
        model or ModelSettings(head="anchored", raw_feature_weight=0, specialist_dim=0)
    )
    kwargs = {"work_dir": tmp_path / f"work-{name}", "limits": DEFAULT_LIMITS, "progress": False}
    return encoder, train_towers(encoder, examples, catalog, settings, **kwargs).history


def test_zero_shot_distillation_is_trained_against_when_switched_on(tmp_path, training_folder):
    """The distillation term (KL from the untrained anchor's image -> class-name distribution) is
    recorded per epoch and falls when it dominates the loss; switched off, it is never computed.
    Whether it helps out of domain is the ablation's question (README: it does not)."""
    catalog, examples = tiny_training_data(tmp_path, training_folder)
    histories = {}
    for weight in (0.0, 200.0):
        _, histories[weight] = train_anchored_briefly(
            tmp_path, catalog, examples, f"distill-{weight}", 4, distillation_weight=weight
        )
    assert all(row.get("loss_distillation", 0.0) == 0.0 for row in histories[0.0])
    distilled = [row["loss_distillation"] for row in histories[200.0][1:]]
    assert distilled[0] > 0.0
    assert distilled[-1] < distilled[0], distilled


def test_residual_decay_holds_the_anchored_residuals_near_the_pretrained_start(tmp_path, training_folder):
    """`residual_weight_decay` decays the two residuals only (their own optimizer group), towards zero,
    where the anchored model is the untrained anchor: trained alike, they end smaller with it."""
    catalog, examples = tiny_training_data(tmp_path, training_folder)
    norms = {}
    for decay in (None, 50.0):
        encoder, _ = train_anchored_briefly(
            tmp_path, catalog, examples, f"decay-{decay}", 3, residual_weight_decay=decay
        )
        residuals = [encoder.image_model.projection.residual, encoder.text_model.head().residual]
        norms[decay] = [float(module.weight.detach().norm()) for module in residuals]
    assert all(norm > 0 for norm in norms[None])  # both residuals learned
    assert all(held < free / 2 for held, free in zip(norms[50.0], norms[None], strict=True)), norms


def test_other_validation_rows_do_not_resume_a_checkpoint_selected_on_the_old_ones(tmp_path):
    """A checkpoint holds the epoch chosen on the out-of-domain val rows: changing those rows (their
    manifest) changes the work folder, so training starts again instead of replaying the old choice."""
    examples, manifest = tmp_path / "examples.parquet", tmp_path / "manifest.csv"
    examples.write_bytes(b"examples")
    manifest.write_text("path,split\na.png,val\n")
    settings, model = TrainingSettings(), ModelSettings().model_dump(mode="json")
    before = fingerprint(settings, model, examples, [manifest])
    assert fingerprint(settings, model, examples, [manifest]) == before
    manifest.write_text("path,split\na.png,val\nb.png,val\n")
    assert fingerprint(settings, model, examples, [manifest]) != before
    assert fingerprint(settings, model, examples, [tmp_path / "not-fetched.csv"]) != before


GRID = {(weight, quantile) for weight in (0.5, 1.0) for quantile in (0.2, 0.6)}


@pytest.mark.parametrize("routing", ["image", "collection"])
def test_the_specialist_block_learns_behind_its_gate_and_its_weight_is_chosen_on_validation(
    tmp_path, training_folder, routing
):
    """Untrained, the block is off (weight 0); its gate's (routed per collection: its router's)
    prototypes are training views and its thresholds quantiles of the val images' similarity to them.
    Every trained epoch moves the block and tries each weight with each threshold and interpolation;
    the model kept carries the weight chosen with its epoch (here epoch 0: the tiny val split is
    solved by the untrained model). Routed per collection, every image's own gate stays open."""
    catalog, examples = tiny_training_data(tmp_path, training_folder)
    settings = TrainingSettings(
        frozen_epochs=2,
        batch_size=16,
        learning_rate=0.005,
        interpolation_grid=[0.0, 1.0],
        specialist_weight_grid=[0.5, 1.0],
        gate_quantile_grid=[0.2, 0.6],
        bridge_top_k_grid=[],
        bridge_temperature_grid=[],
        raw_weight_grid=[],
    )
    raw_weight = 1.0 if routing == "collection" else 0  # the router reads the raw block
    model = ModelSettings(
        head="anchored", raw_feature_weight=raw_weight, specialist_dim=8, specialist_routing=routing
    )
    encoder = build_trained_encoder(model)
    specialist = encoder.image_model.projection.specialist
    start = specialist.projection.weight.detach().clone()
    kwargs = {"work_dir": tmp_path / "work-specialist", "limits": DEFAULT_LIMITS, "progress": False}
    result = train_towers(encoder, examples, catalog, settings, **kwargs)
    untrained, *trained = result.history
    assert untrained["specialist_weight"] == 0.0
    assert [(row["specialist_weight"], row["gate_quantile"]) in GRID for row in trained] == [True, True]
    last = torch.load(kwargs["work_dir"] / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert not torch.equal(last["parts"]["image_projection.specialist.projection.weight"], start)
    low, high = last["gate_thresholds"][0.2], last["gate_thresholds"][0.6]
    assert 0 < low < high < 1  # a higher quantile of the val images' similarity: a stricter gate
    assert float(specialist.weight) == result.selected["specialist_weight"]
    assert float(encoder.text_model.head().specialist.weight) == result.selected["specialist_weight"]
    if routing == "collection":
        assert float(specialist.gate.threshold) == -2.0
        assert 0 < float(encoder.image_model.router.threshold) < 1
        features = np.random.default_rng(0).random((4, 1280), dtype=np.float32)
        assert route_collection(encoder, encoder.encode_features(features))[1] in (True, False)


@pytest.mark.parametrize("classifier_residual", [False, True])
def test_training_leaves_the_anchor_pretrained_so_interpolation_zero_is_the_untrained_model(
    tmp_path, training_folder, classifier_residual
):
    """Only the residuals learn: the bridge's ImageNet classifier, shared with the backbone, keeps its
    pretrained weights (a classifier residual learns a correction of its logits instead), so every
    image vector at interpolation 0 is the untrained model's."""
    catalog, examples = tiny_training_data(tmp_path, training_folder)
    model = ModelSettings(
        head="anchored", raw_feature_weight=0, specialist_dim=0, classifier_residual=classifier_residual
    )
    untrained = build_trained_encoder(model)
    encoder, _ = train_anchored_briefly(tmp_path, catalog, examples, "anchor", 2, model)
    projection = encoder.image_model.projection
    assert projection.residual.weight.detach().norm() > 0  # the residual learned
    if classifier_residual:  # ... and so did the correction of the class logits
        assert projection.classifier_residual.weight.detach().norm() > 0
    else:
        assert projection.classifier_residual is None
    classifier = projection.classifier
    assert torch.equal(classifier.weight, untrained.image_model.projection.classifier.weight)
    set_interpolation(encoder.image_model, 0.0)
    features = torch.rand(4, 1280)
    with torch.no_grad():
        np.testing.assert_allclose(
            encoder.image_model.from_features(features),
            untrained.image_model.from_features(features),
            atol=1e-6,
        )
