"""The backbone cache: one backbone pass per image per trunk, read back by every head on that trunk."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data

from imagesearch.catalog.build import read_catalog
from imagesearch.catalog.step import catalog_step
from imagesearch.common.executor import InProcess
from imagesearch.common.images import DEFAULT_LIMITS
from imagesearch.embeddings import backbone_cache
from imagesearch.embeddings.backbone_cache import BackboneCache, encode_files
from imagesearch.embeddings.backfill import backfill
from imagesearch.embeddings.store import read_model_embeddings
from imagesearch.models.builders import build_trained_encoder
from imagesearch.settings import ModelSettings
from imagesearch.training_data.labels import classifier_labels
from tests.conftest import noise_image


@pytest.fixture(scope="module")
def two_tower():
    return build_trained_encoder(ModelSettings(head="two_tower", embed_dim=32, raw_feature_weight=0), seed=0)


@pytest.fixture
def decoded_paths(monkeypatch) -> list[str]:
    """Every path the cache had to decode and run through a backbone (the misses), in order."""
    seen: list[str] = []
    real = backbone_cache.decoded_batches

    def counting(paths, *args, **kwargs):
        seen.extend(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(backbone_cache, "decoded_batches", counting)
    return seen


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def test_a_second_model_on_the_same_trunk_embeds_from_the_cache(
    workspace_settings, zeroshot_encoder, two_tower, tmp_path, monkeypatch
):
    catalog_step(workspace_settings, record=False, progress=False)
    catalog = read_catalog(workspace_settings.catalog_path)
    executor = InProcess(1, features_dir=tmp_path / "features")
    options = {"batch_size": 4, "executor": executor, "limits": DEFAULT_LIMITS, "progress": False}
    first = backfill(zeroshot_encoder, catalog, tmp_path / "emb" / "v0", **options)
    assert first.embedded == len(catalog) == 6

    def no_backbone(pixels):
        raise AssertionError("the backbone ran although the cache holds every image")

    monkeypatch.setattr(two_tower, "pooled_features", no_backbone)
    second = backfill(two_tower, catalog, tmp_path / "emb" / "two", **options)
    assert (second.embedded, second.failed) == (6, {})
    vectors, missing = read_model_embeddings(tmp_path / "emb" / "two", catalog["id"])
    monkeypatch.undo()
    direct = two_tower.encode_images(catalog["path"].tolist())
    assert missing.empty and cosines(vectors, direct).min() >= 0.9999


def test_an_edited_file_is_embedded_again_and_the_others_are_read_back(
    zeroshot_encoder, tmp_path, decoded_paths
):
    paths = []
    for seed in range(3):
        paths.append(str(tmp_path / f"{seed}.png"))
        noise_image(seed).save(paths[-1])
    folder = tmp_path / "features"
    cold = encode_files(zeroshot_encoder, paths, folder)
    assert decoded_paths == paths
    decoded_paths.clear()
    warm = encode_files(zeroshot_encoder, paths, folder)
    assert decoded_paths == [] and np.array_equal(cold, warm)  # float16-rounded either way

    noise_image(99).save(paths[1])
    os.utime(paths[1], ns=(1, 1))  # a new modification time even on a coarse clock
    edited = encode_files(zeroshot_encoder, paths, folder)
    assert decoded_paths == [paths[1]]
    assert np.array_equal(edited[[0, 2]], cold[[0, 2]]) and not np.allclose(edited[1], cold[1])
    assert cosines(edited, zeroshot_encoder.encode_images(paths)).min() >= 0.9999
    assert len(BackboneCache(folder, zeroshot_encoder.backbone_key).lookup(paths)) == 3


def test_classifier_labels_come_from_the_cache_when_a_backfill_filled_it(
    zeroshot_encoder, tmp_path, decoded_paths
):
    paths = []
    for name, load in {"cat": data.chelsea, "coffee": data.coffee}.items():
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(load()).save(paths[-1])
    open(tmp_path / "broken.png", "wb").close()
    images = pd.DataFrame({"id": ["a", "b", "c"], "path": [*paths, str(tmp_path / "broken.png")]})
    folder = tmp_path / "features"
    encode_files(zeroshot_encoder, paths, folder)  # what the v0 backfill leaves behind
    decoded_paths.clear()
    labels = classifier_labels(images, ModelSettings(), DEFAULT_LIMITS, features=folder, progress=False)
    assert decoded_paths == [str(tmp_path / "broken.png")]  # only the image the cache lacked
    assert labels["id"].tolist() == ["a", "b"]  # the unreadable one is left out
    cold = classifier_labels(images, ModelSettings(), DEFAULT_LIMITS, features=None, progress=False)
    assert labels["label"].tolist() == cold["label"].tolist()
    assert labels["label"].tolist() == ["Egyptian cat", "espresso"]
    np.testing.assert_allclose(labels["probability"], cold["probability"], atol=2e-3)


def test_training_reads_clean_views_from_the_cache_and_computes_the_same_features(
    zeroshot_encoder, tmp_path, decoded_paths
):
    """The val split's and the outside collections' clean views: read back from the backbone cache when
    a frozen pooled trunk trains, equal to what the trunk computes on the views itself."""
    from imagesearch.settings import TrainingSettings
    from imagesearch.training.features import build_feature_cache, split_backbone
    from imagesearch.training.validation import ValidationSet

    encoder = build_trained_encoder(ModelSettings(head="two_tower", embed_dim=16, raw_feature_weight=0))
    paths = []
    for seed in range(4):
        paths.append(str(tmp_path / f"{seed}.png"))
        noise_image(seed, (120, 80)).save(paths[-1])
    validation = ValidationSet(["v0", "v1"], paths[:2], ["a", "a"], [], [], [], [])
    train = pd.Series({"t0": paths[2]})
    trunk, _ = split_backbone(encoder.image_model.backbone, 0)
    settings = TrainingSettings(views=1)
    args = (encoder, trunk, train, validation, ["a text"], settings, DEFAULT_LIMITS, False)
    plain = build_feature_cache(*args, {"outside": paths[3:]})
    folder = tmp_path / "features"
    encode_files(zeroshot_encoder, paths[:2], folder)  # the backfill embedded the val images
    decoded_paths.clear()
    cached = build_feature_cache(*args, {"outside": paths[3:]}, backbone_features=folder)
    assert decoded_paths == paths[3:]  # only the outside image was not cached yet
    assert torch.nn.functional.cosine_similarity(cached.val.float(), plain.val.float()).min() >= 0.9999
    assert torch.allclose(cached.outside["outside"].float(), plain.outside["outside"].float(), atol=2e-3)
