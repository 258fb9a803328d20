"""Training on tiny real images: the Dagster chain from catalog to a registered challenger, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
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
from imagesearch.evaluation.step import evaluation_step
from imagesearch.index.store import load_index
from imagesearch.models.encoders import build_two_tower_encoder
from imagesearch.models.registry import CHALLENGER, CHAMPION, alias_version, connect
from imagesearch.settings import ModelSettings, TrainingSettings
from imagesearch.training.loop import train_towers
from imagesearch.training_data.examples import EXAMPLE_COLUMNS, augmentation_pairs, mix_examples, tag_pairs

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


def test_chain_builds_every_source_mixes_trains_and_registers_a_challenger(
    tmp_path, training_folder, saved_encoder, monkeypatch
):
    for key, value in SMALL_TRAINING.items():
        monkeypatch.setenv(key, value)
    workspace = WorkspaceResource(home=str(tmp_path / "ws"), image_dirs=[str(training_folder)])
    resources = {"workspace": workspace}
    model = {"config": {"model": str(saved_encoder)}}
    config = {"ops": {"image_embeddings": model, "search_index": model}}
    first = dg.materialize(
        [image_catalog, image_embeddings, search_index],
        resources=resources,
        run_config=config,
        tags=ALL_SHARDS,
    )
    assert first.success
    settings = workspace.settings()
    judgments = write_judgments(read_catalog(settings.catalog_path), tmp_path / "judgments.csv")
    monkeypatch.setenv("IMAGESEARCH_TRAINING_DATA__JUDGMENTS_PATH", str(judgments))

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
    for source in ["augmentation", "classifier", "tags", "judgments", "clicks"]:
        frame = pd.read_parquet(settings.source_path(source))
        assert list(frame.columns) == EXAMPLE_COLUMNS, source
        assert len(frame) > 0 and set(frame["source"]) == {source}
    judged = metadata(result, "judgment_pairs")["report"]
    assert judged["rejected_by_reason"] == {"unknown image_id": 1}
    assert judged["queries"] == {"train": 1, "eval": 1}
    assert set(pd.read_parquet(settings.source_path("judgments"))["positive_text"]) == {"some food"}
    assert metadata(result, "click_pairs")["report"]["simulated_clicks_written"] > 0
    assert set(metadata(result, "training_examples")["by_source"]) == {
        "augmentation",
        "classifier",
        "tags",
        "judgments",
        "clicks",
    }
    leakage = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_evaluation_leakage"]
    assert leakage[0].passed

    trained = metadata(result, "trained_model")
    history = trained["history"]
    assert len(history) == 5 and history[-1]["loss"] < history[1]["loss"]
    connect(settings)
    version = alias_version(settings, CHALLENGER)
    assert version == trained["model_version"]
    client = MlflowClient()
    run = client.get_run(trained["mlflow_run_id"])
    assert run.data.params["training.frozen_epochs"] == "3"
    assert "dvc.examples.parquet" in run.data.tags and run.data.tags["git_commit"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/training_curves.png", "plots/example_results.png"}
    saved = json.loads((settings.trained_model_dir / "metrics.json").read_text())
    assert saved["model_version"] == version

    check_evaluation_and_promotion(resources, settings, version, monkeypatch)

    # a val image slipped into a source: the blocking check stops the chain before training
    augmentation = pd.read_parquet(settings.source_path("augmentation"))
    val_image = read_catalog(settings.catalog_path).query("split == 'val'")["id"].iloc[0]
    augmentation.loc[0, "positive_id"] = val_image
    augmentation.to_parquet(settings.source_path("augmentation"), index=False)
    leaked = dg.materialize(
        [training_examples, no_evaluation_leakage, trained_model], resources=resources, raise_on_error=False
    )
    assert not leaked.success
    check = leaked.get_asset_check_evaluations()[0]
    assert not check.passed and "non-train images" in str(check.metadata["problems"].value)
    assert alias_version(settings, CHALLENGER) == version  # nothing new was trained


def check_evaluation_and_promotion(resources, settings, challenger: str, monkeypatch) -> None:
    """Held-out sets, every model evaluated, checks passed, and the rule's decision in the registry."""
    chain = [eval_sets, offline_evaluation, served_index_is_sound, evaluation_is_held_out, model_promotion]
    result = dg.materialize(chain, resources=resources)
    assert result.success
    sets = metadata(result, "eval_sets")
    assert sets["corpus_images"] > 0 and sets["image_queries"] > 0 and "dvc_md5" in sets
    corpus = pd.read_parquet(settings.evaluation_dir / "corpus.parquet")
    assert set(read_catalog(settings.catalog_path).set_index("id").loc[corpus["id"], "split"]) == {"test"}
    evaluated = metadata(result, "offline_evaluation")
    assert set(evaluated["models"]) == {"challenger", "champion", "v0", "pretrained features"}
    assert "ndcg_at_10" in evaluated["table"] and "image_to_image" in evaluated["table"]
    assert all(c.passed for c in result.get_asset_check_evaluations())
    client = MlflowClient()
    metrics = client.get_run(evaluated["mlflow_run_id"]).data.metrics
    assert "eval.challenger.image_to_image.ndcg_at_10" in metrics
    assert {a.path for a in client.list_artifacts(evaluated["mlflow_run_id"], "evaluation")} == {
        "evaluation/ndcg_at_10.png",
        "evaluation/recall_at_k.png",
        "evaluation/examples.png",
    }
    promoted = metadata(result, "model_promotion")
    tags = client.get_model_version(settings.model.registered_name, challenger).tags
    assert tags["promotion.decision"] == ("promoted" if promoted["promoted"] else "kept")
    assert tags["promotion.reason"] == promoted["reason"]
    assert (alias_version(settings, CHAMPION) == challenger) is promoted["promoted"]

    # the served model through the served index (Flat here) ranks exactly as exact search does
    served_model = load_index(settings.search_index_dir).manifest.model
    served = evaluation_step(settings, models={"served": served_model})
    assert served.results["served via index"] == served.results["served"]

    # the ablation: one tiny model per variant, one table, nested MLflow runs
    monkeypatch.setenv("IMAGESEARCH_ABLATION__VARIANTS", '["tags", "all"]')
    monkeypatch.setenv("IMAGESEARCH_ABLATION__FROZEN_EPOCHS", "1")
    ablation = metadata(dg.materialize([ablation_study], resources=resources), "ablation_study")
    assert ablation["variants"] == 2 and "text_to_image ndcg@10" in ablation["table"]
    nested = client.search_runs(
        [client.get_run(ablation["mlflow_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{ablation['mlflow_run_id']}'",
    )
    assert sorted(r.data.params["variant"] for r in nested) == ["all", "tags"]

    # a rule any challenger passes moves the alias; asking again changes nothing
    monkeypatch.setenv("IMAGESEARCH_EVALUATION__PROMOTION_MARGIN", "-1")
    monkeypatch.setenv("IMAGESEARCH_EVALUATION__GUARD_TOLERANCE", "1")
    for expected in (True, False):
        again = dg.materialize([offline_evaluation, model_promotion], resources=resources)
        assert metadata(again, "model_promotion")["promoted"] is (expected and not promoted["promoted"])
        assert alias_version(settings, CHAMPION) == challenger


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, training_folder):
    from imagesearch.catalog.build import build_catalog
    from imagesearch.settings import CatalogSettings, SourceSettings

    catalog_path = tmp_path / "catalog.parquet"
    build_catalog(
        [SourceSettings(name="tiny", path=training_folder)],
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
    settings = TrainingSettings(frozen_epochs=2, unfrozen_epochs=2, batch_size=16, unfrozen_rows_per_epoch=32)

    class Interrupted(Exception):
        pass

    def stop_after_two(epoch: int, metrics: dict) -> None:
        if epoch == 3:
            raise Interrupted

    def train(work_dir: Path, callback=None):
        encoder = build_two_tower_encoder(ModelSettings(embed_dim=32))
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
