"""Training-data sources, judgment import, the click simulator and the leakage rule, on small tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imagesearch.catalog.step import catalog_step
from imagesearch.evaluation.ablation import variant_weights
from imagesearch.feedback.clicklog import ClickLog, UnknownQuery
from imagesearch.feedback.simulation import SimulatedQuery, examination_probability, simulate_clicks
from imagesearch.training_data.clicks import click_pairs
from imagesearch.training_data.examples import (
    EXAMPLE_COLUMNS,
    augmentation_pairs,
    classifier_pairs,
    examples_frame,
    leakage_problems,
    mix_examples,
    tag_pairs,
)
from imagesearch.training_data.judgments import eval_qrels, import_judgments, judgment_pairs, query_side
from imagesearch.training_data.step import mix_step, source_step


@pytest.fixture
def catalog() -> pd.DataFrame:
    """12 images: 8 train (4 'cat' + 4 'car'), 2 val, 2 test."""
    rows = []
    for i in range(12):
        split = "train" if i < 8 else "val" if i < 10 else "test"
        category = "cats" if i % 2 == 0 else "cars"
        rows.append(
            {
                "id": f"{i:02x}" * 16,
                "split": split,
                "category": category,
                "tags": [category, "everything"],
                "title": f"{category[:-1]} number {i}",
                "caption": "a sleepy cat" if i == 0 else None,
                "path": f"/nowhere/{i}.png",
            }
        )
    return pd.DataFrame(rows)


def ids(catalog, split):
    return set(catalog.loc[catalog["split"] == split, "id"])


def assert_schema(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == EXAMPLE_COLUMNS
    one_positive = frame["positive_id"].notna() ^ frame["positive_text"].notna()
    assert one_positive.all() and (frame["weight"] > 0).all()


def test_augmentation_rows_pair_each_train_image_with_itself(catalog):
    frame = augmentation_pairs(catalog, per_image=2)
    assert_schema(frame)
    assert len(frame) == 16 and (frame["anchor_id"] == frame["positive_id"]).all()
    assert set(frame["anchor_id"]) == ids(catalog, "train")


def test_classifier_pairs_keep_confident_labels_only(catalog):
    train = sorted(ids(catalog, "train"))
    labels = pd.DataFrame(
        {"id": train, "label": ["tabby"] * 4 + ["sports car"] * 4, "probability": [0.9, 0.8, 0.2, 0.7] * 2}
    )
    frame = classifier_pairs(labels, threshold=0.5, prompt="clip art of a {}", same_label_positives=1, seed=0)
    assert_schema(frame)
    texts = frame[frame["positive_text"].notna()]
    assert len(texts) == 6 and set(texts["positive_text"]) == {
        "clip art of a tabby",
        "clip art of a sports car",
    }
    assert texts["weight"].min() == pytest.approx(0.7)
    images = frame[frame["positive_id"].notna()]
    label_of = dict(zip(labels["id"], labels["label"], strict=True))
    assert len(images) == 6
    assert all(
        label_of[a] == label_of[p] and a != p
        for a, p in zip(images["anchor_id"], images["positive_id"], strict=True)
    )


def test_tag_pairs_use_specific_tags_for_images_and_every_text(catalog):
    frame = tag_pairs(catalog, max_share=0.6, same_tag_positives=2, seed=0)
    assert_schema(frame)
    category = catalog.set_index("id")["category"]
    images = frame[frame["positive_id"].notna()]
    # 'everything' is on all train images: too generic to pair two images
    assert (category[images["anchor_id"]].to_numpy() == category[images["positive_id"]].to_numpy()).all()
    texts = set(frame["positive_text"].dropna())
    assert {"cats", "cars", "everything", "a sleepy cat", "cat number 0"} <= texts
    used = set(frame["anchor_id"]) | set(frame["positive_id"].dropna())
    assert used <= ids(catalog, "train")


def test_mix_scales_weights_and_drops_disabled_sources(catalog):
    sources = {
        "augmentation": augmentation_pairs(catalog, per_image=1),
        "tags": tag_pairs(catalog, max_share=0.6, same_tag_positives=1, seed=0),
    }
    mixed = mix_examples(sources, {"augmentation": 0.5, "tags": 0.0}, seed=0)
    assert_schema(mixed)
    assert set(mixed["source"]) == {"augmentation"} and (mixed["weight"] == 0.5).all()
    again = mix_examples(sources, {"augmentation": 0.5, "tags": 0.0}, seed=0)
    assert mixed.equals(again)


def test_leakage_check_catches_an_injected_eval_image_and_held_out_query(catalog):
    clean = augmentation_pairs(catalog, per_image=1)
    assert leakage_problems(clean, catalog) == []
    val_image = sorted(ids(catalog, "val"))[0]
    injected = pd.concat(
        [
            clean,
            examples_frame(
                [
                    {
                        "anchor_id": sorted(ids(catalog, "train"))[0],
                        "positive_id": val_image,
                        "weight": 1.0,
                        "source": "tags",
                    }
                ]
            ),
        ]
    )
    problems = leakage_problems(injected, catalog)
    assert len(problems) == 1 and "positive_id" in problems[0] and "val" in problems[0]
    judged = examples_frame(
        [
            {
                "anchor_id": sorted(ids(catalog, "train"))[0],
                "positive_text": "secret query",
                "weight": 1.0,
                "source": "judgments",
            }
        ]
    )
    assert leakage_problems(judged, catalog, eval_queries={"secret query"})


def judgment_file(catalog) -> pd.DataFrame:
    train = sorted(ids(catalog, "train"))
    return pd.DataFrame(
        [
            {"query_text": "cat", "query_image_id": None, "image_id": train[0], "grade": "3"},
            {"query_text": "cat", "query_image_id": None, "image_id": train[1], "grade": "0"},
            {"query_text": "cat", "query_image_id": None, "image_id": train[2], "grade": "2"},
            {"query_text": None, "query_image_id": train[0], "image_id": train[2], "grade": "3"},
            {"query_text": "cat", "query_image_id": None, "image_id": "ffff", "grade": "3"},
            {"query_text": "cat", "query_image_id": None, "image_id": train[3], "grade": "7"},
            {"query_text": None, "query_image_id": None, "image_id": train[3], "grade": "1"},
            {"query_text": "dog", "query_image_id": train[1], "image_id": train[3], "grade": "1"},
            {"query_text": "cat", "query_image_id": None, "image_id": train[4], "grade": "high"},
        ]
    )


def test_judgment_import_rejects_bad_rows_with_a_report(catalog):
    imported = import_judgments(judgment_file(catalog), catalog, eval_fraction=0.0)
    assert len(imported.accepted) == 4
    assert imported.report["rejected_by_reason"] == {
        "unknown image_id": 1,
        "grade must be one of [0, 1, 2, 3]": 2,
        "no query: set query_text or query_image_id": 1,
        "two queries: set only one of query_text, query_image_id": 1,
    }


def test_judgment_pairs_grade_weights_negatives_and_split_by_query(catalog):
    imported = import_judgments(judgment_file(catalog), catalog, eval_fraction=0.0)
    frame = judgment_pairs(imported.accepted, catalog, seed=0)
    assert_schema(frame)
    text_rows = frame[frame["positive_text"] == "cat"]
    assert sorted(text_rows["weight"].round(3)) == [pytest.approx(0.667, abs=1e-3), 1.0]
    assert set(text_rows["negative_id"]) == {sorted(ids(catalog, "train"))[1]}  # the grade-0 image
    assert len(frame[frame["positive_id"].notna()]) == 1
    # every judgment of a query lands on the same side; eval queries never become examples
    sides = {q: query_side(q, 0.5) for q in ["cat", "image:" + sorted(ids(catalog, "train"))[0]]}
    imported = import_judgments(judgment_file(catalog), catalog, eval_fraction=0.5)
    held_out = eval_qrels(imported.accepted)
    assert set(held_out["query"]) == {q for q, side in sides.items() if side == "eval"}
    pairs = judgment_pairs(imported.accepted, catalog, seed=0)
    assert not set(pairs["positive_text"].dropna()) & set(held_out["query"])


def test_click_log_refuses_a_click_on_a_rank_never_shown(tmp_path):
    log = ClickLog(f"sqlite:///{tmp_path / 'clicks.sqlite'}")
    query_id = log.log_query([("a", 0.9), ("b", 0.5)], model_version="v1", query_text="x")
    assert log.log_click(query_id, 2) == "b"
    with pytest.raises(UnknownQuery):
        log.log_click(query_id, 3)
    tables = log.read()
    assert (len(tables.queries), len(tables.impressions), len(tables.clicks)) == (1, 2, 1)


def test_simulated_clicks_recover_the_relevant_items_with_position_bias_removed(tmp_path, catalog):
    train = sorted(ids(catalog, "train"))
    relevant = set(train[:4:2]) | {train[6]}  # ranks 1, 3 and 7 of the ranking below
    ranking = [(image_id, 1.0 - i / 10) for i, image_id in enumerate(train)]
    log = ClickLog(f"sqlite:///{tmp_path / 'clicks.sqlite'}")
    query = SimulatedQuery("cat", dict.fromkeys(relevant, 3))
    written = simulate_clicks(
        log, [query], lambda text: ranking, sessions=600, eta=1.0, model_version="sim", noise=0.0, seed=1
    )
    assert written > 0
    frame = click_pairs(log.read(), catalog, eta=1.0, max_weight=100.0)
    assert_schema(frame)
    assert set(frame["anchor_id"]) == relevant and set(frame["positive_text"]) == {"cat"}
    raw = frame["anchor_id"].value_counts()
    corrected = frame.groupby("anchor_id")["weight"].sum()
    # raw clicks fall with rank (1 : 1/3 : 1/7); inverse propensity weighting makes them equal again
    assert raw[train[0]] > 3 * raw[train[6]]
    assert corrected[train[6]] / corrected[train[0]] == pytest.approx(1.0, rel=0.35)
    skipped = frame.loc[frame["anchor_id"] == train[6], "negative_id"]
    assert skipped.notna().all() and set(skipped) <= set(train[:6]) - relevant


def test_examination_probability_follows_the_position_model():
    np.testing.assert_allclose(examination_probability(np.array([1, 2, 4]), 1.0), [1, 0.5, 0.25])
    np.testing.assert_allclose(examination_probability(np.array([1, 2, 4]), 0.0), [1, 1, 1])


def test_online_metrics_per_model_and_day(tmp_path):
    from datetime import UTC, datetime

    from imagesearch.common.plots import online_metrics_plot
    from imagesearch.feedback.online_metrics import online_metrics

    log = ClickLog(f"sqlite:///{tmp_path / 'clicks.sqlite'}")
    day = datetime(2026, 11, 1, 12, tzinfo=UTC)
    shown = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    first = log.log_query(shown, model_version="v1", query_text="x", at=day)
    log.log_click(first, 2)
    log.log_click(first, 3)
    log.log_query(shown, model_version="v1", query_text="y", at=day)  # abandoned
    third = log.log_query(shown, model_version="v2", query_text="x", at=day)
    log.log_click(third, 1)
    simulated = log.log_query(shown, model_version="v2", query_text="x", simulated=True, at=day)
    log.log_click(simulated, 3)
    summary = online_metrics(log.read(), k=2).set_index(["model_version", "simulated"])
    v1 = summary.loc[("v1", False)]
    assert (v1["queries"], v1["ctr_at_k"], v1["mrr"], v1["abandonment"], v1["clicks_per_query"]) == (
        2,
        0.5,
        pytest.approx(0.25),
        0.5,
        1.0,
    )
    v2 = summary.loc[("v2", False)]
    assert (v2["ctr_at_k"], v2["mrr"], v2["abandonment"]) == (1.0, 1.0, 0.0)
    assert summary.loc[("v2", True), "ctr_at_k"] == 0.0  # its click is at rank 3 > k
    assert online_metrics_plot(summary.reset_index(), tmp_path / "online.png").stat().st_size > 0


def test_augmented_views_depend_on_the_image_id_not_its_path(tmp_path):
    import torch

    from imagesearch.common.images import DEFAULT_LIMITS
    from imagesearch.models.preprocess import Preprocessor
    from imagesearch.training.augment import ImageViews
    from tests.conftest import noise_image

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        noise_image(7).save(tmp_path / folder / "x.png")
    preprocessor = Preprocessor(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def views(folder: str, image_id: str) -> torch.Tensor:
        dataset = ImageViews(
            [str(tmp_path / folder / "x.png")],
            [image_id],
            preprocessor,
            DEFAULT_LIMITS,
            views=2,
            augment=True,
            seed=0,
        )
        return dataset[0][1]

    same = views("a", "id1")
    assert torch.equal(same, views("b", "id1"))  # another checkout, same views
    assert not torch.equal(same[0], same[1])  # two different views of one image
    assert not torch.equal(same, views("a", "id2"))


def test_subsampling_keeps_positive_pairs_and_drops_only_outside_negatives():
    from imagesearch.training.examples import subsample_examples

    examples = pd.DataFrame(
        {
            "anchor_id": ["a", "b", "c", "a"],
            "positive_id": ["b", None, "zz", None],
            "positive_text": [None, "some text", None, "a query"],
            "negative_id": [None, "c", None, "outside"],
            "weight": 1.0,
            "source": "tags",
        }
    )
    kept = subsample_examples(examples, max_images=3, seed=0)  # keeps a, b, c
    assert kept["anchor_id"].tolist() == ["a", "b", "a"]  # the pair with 'zz' (not an anchor) goes
    assert kept["negative_id"].iloc[1] == "c" and pd.isna(kept["negative_id"].iloc[2])  # dropped, not its row
    assert subsample_examples(examples, None, 0) is examples


# --- the steps, called directly (as the CLI and the DVC stages call them) ---------------------------
def test_source_and_mix_steps_write_versionless_outputs_the_mix_reads(workspace_settings):
    catalog_step(workspace_settings, record=False, progress=False)
    for source in ("augmentation", "tags"):
        result = source_step(workspace_settings, source, record=False, progress=False)
        assert result.version is None and workspace_settings.source_path(source).exists()
    with pytest.raises(FileNotFoundError, match="classifier"):
        mix_step(workspace_settings, record=False)  # an enabled source was never built
    only_built = workspace_settings.model_copy(
        update={
            "training_data": workspace_settings.training_data.model_copy(
                update={"source_weights": {"augmentation": 1.0, "tags": 1.0}}
            )
        }
    )
    mixed = mix_step(only_built, record=False)
    assert mixed.rows == len(pd.read_parquet(only_built.examples_path)) > 0 and not mixed.problems
    with pytest.raises(ValueError, match="unknown training-data source"):
        source_step(workspace_settings, "captions", record=False)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("tags", {"augmentation": 0.0, "tags": 1.0, "clicks": 0.0}),
        ("all", {"augmentation": 0.5, "tags": 1.0, "clicks": 0.0}),
    ],
)
def test_ablation_variants_keep_only_their_sources(variant, expected):
    assert variant_weights(variant, {"augmentation": 0.5, "tags": 1.0, "clicks": 0.0}) == expected
    with pytest.raises(ValueError, match="unknown ablation variant"):
        variant_weights("captions", expected)
