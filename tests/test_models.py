"""Models: the two towers and the zero-shot baseline with the real offline weights, and the MLflow
registry round trip (log as pyfunc, register, alias, load by alias in a fresh process)."""

from __future__ import annotations

import base64
import copy
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from skimage import data

from imagesearch.embeddings.store import mark_routing, routes
from imagesearch.feedback.clicklog import ClickLog
from imagesearch.feedback.simulation import simulate_workspace_clicks
from imagesearch.index.folder import build_folder_index
from imagesearch.index.routing import as_base
from imagesearch.index.store import load_index
from imagesearch.models.backbones import WeightsNotFound, create_image_backbone, load_text_model
from imagesearch.models.builders import build_trained_encoder, imagenet_class_names
from imagesearch.models.encoders import Encoder
from imagesearch.models.onnx_runtime import OnnxUnavailable
from imagesearch.models.preprocess import letterbox
from imagesearch.models.registry import (
    CHAMPION,
    RegistryError,
    alias_version,
    connect,
    load_encoder,
    log_encoder,
    version_of_run,
)
from imagesearch.models.routing import route_collection
from imagesearch.models.towers import SQRT_CENTERED, set_interpolation, set_specialist_weight
from imagesearch.settings import ModelSettings, Settings
from tests.conftest import noise_image, png_bytes

# --- encoders --------------------------------------------------------------------------------
PHOTOS = {"cat": data.chelsea, "coffee": data.coffee, "rocket": data.rocket}
CAPTIONS = {"cat": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket launch"}


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(load()) for name, load in PHOTOS.items()}


@pytest.fixture(scope="module")
def two_tower() -> Encoder:
    return build_trained_encoder(ModelSettings(head="two_tower", embed_dim=32, raw_feature_weight=0), seed=0)


@pytest.fixture(scope="module")
def anchored() -> Encoder:
    return build_trained_encoder(ModelSettings(), seed=0)


def test_mapped_backbone_classifies_real_photos(zeroshot_encoder, photos):
    names = imagenet_class_names()
    pixels = zeroshot_encoder.preprocess([photos["cat"], photos["coffee"]])
    with torch.inference_mode():
        top = zeroshot_encoder.image_model.classifier(pixels).argmax(dim=-1).tolist()
    assert names[top[0]].split(",")[0] in {"tabby", "tiger cat", "Egyptian cat", "Persian cat"}
    assert names[top[1]].split(",")[0] in {"espresso", "cup"}


def test_zeroshot_ranks_the_matching_caption_first(zeroshot_encoder, photos):
    images = zeroshot_encoder.encode_images(list(photos.values()))
    texts = zeroshot_encoder.encode_texts([CAPTIONS[name] for name in photos])
    similarity = images @ texts.T  # rows: images, columns: captions in the same order
    assert list(similarity.argmax(axis=1)) == list(range(len(photos))), np.round(similarity, 3)


def test_embeddings_are_unit_float32(zeroshot_encoder, photos):
    vectors = np.concatenate(
        [zeroshot_encoder.encode_images([photos["cat"]]), zeroshot_encoder.encode_texts(["x"])]
    )
    assert vectors.dtype == np.float32 and vectors.shape[1] == zeroshot_encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_two_tower_outputs_the_shared_dimension(two_tower, photos):
    images = two_tower.encode_images(list(photos.values()))
    texts = two_tower.encode_texts(list(CAPTIONS.values()))
    assert images.shape == (3, 32) and texts.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(images[0], images[1])


def test_the_untrained_anchored_model_is_v0_plus_raw_features(anchored, zeroshot_encoder, photos):
    images = anchored.encode_images(list(photos.values()))
    texts = anchored.encode_texts(list(CAPTIONS.values()))
    assert images.shape == texts.shape == (3, 384 + 257 + 1280) == (3, anchored.dim)  # v0, block, raw
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert np.all(texts[:, 384:] == 0)  # texts score against the shared part only
    assert np.all(images[:, 384:641] == 0)  # the specialist block is off (weight 0) until trained
    shared = images[:, :384] / np.linalg.norm(images[:, :384], axis=1, keepdims=True)
    np.testing.assert_allclose(shared, zeroshot_encoder.encode_images(list(photos.values())), atol=1e-5)
    np.testing.assert_allclose(
        texts[:, :384], zeroshot_encoder.encode_texts(list(CAPTIONS.values())), atol=1e-6
    )
    # the raw block is the backbone's own pooled features
    with torch.inference_mode():
        features = anchored.image_model.features(anchored.preprocess([photos["cat"]]))
    raw = torch.nn.functional.normalize(features, dim=-1).numpy()[0]
    block = images[0, -1280:] / np.linalg.norm(images[0, -1280:])
    np.testing.assert_allclose(block, raw, atol=1e-4)


def test_the_anchored_interpolation_scales_the_learned_residual(anchored, photos, tmp_path):
    projection = anchored.image_model.projection
    with torch.no_grad():
        projection.residual.bias.fill_(0.05)
    try:
        full = anchored.encode_images([photos["cat"]])
        projection.interpolation.fill_(0.0)
        at_zero = anchored.encode_images([photos["cat"]])
        reloaded = Encoder.load(anchored.save(tmp_path / "anchored"))
        np.testing.assert_array_equal(reloaded.encode_images([photos["cat"]]), at_zero)
        assert not np.allclose(full, at_zero)
    finally:
        projection.interpolation.fill_(1.0)
        with torch.no_grad():
            projection.residual.bias.zero_()


def test_the_bridge_temperature_softens_the_anchor_and_is_saved_in_the_spec(anchored, photos, tmp_path):
    projection, spec = anchored.image_model.projection, anchored.spec
    at_one = anchored.encode_images([photos["cat"]])
    projection.top_k, projection.temperature = 30, 2.0
    anchored.spec = replace(spec, zeroshot_top_k=30, bridge_temperature=2.0)
    try:
        softer = anchored.encode_images([photos["cat"]])
        reloaded = Encoder.load(anchored.save(tmp_path / "anchored"))
        assert (reloaded.spec.zeroshot_top_k, reloaded.spec.bridge_temperature) == (30, 2.0)
        np.testing.assert_allclose(reloaded.encode_images([photos["cat"]]), softer, atol=1e-6)
        assert not np.allclose(softer, at_one, atol=1e-3)
    finally:
        projection.top_k, projection.temperature, anchored.spec = spec.zeroshot_top_k, 1.0, spec


def test_saved_encoder_reloads_to_identical_outputs(two_tower, photos, tmp_path):
    reloaded = Encoder.load(two_tower.save(tmp_path / "enc"))
    np.testing.assert_array_equal(
        reloaded.encode_images([photos["coffee"]]), two_tower.encode_images([photos["coffee"]])
    )
    np.testing.assert_array_equal(reloaded.encode_texts(["hello"]), two_tower.encode_texts(["hello"]))


def test_letterbox_keeps_aspect_and_pads_white():
    wide = letterbox(Image.new("RGB", (200, 100), (0, 0, 0)), 64)
    assert wide.size == (64, 64)
    assert wide.getpixel((32, 2)) == (255, 255, 255) and wide.getpixel((32, 32)) == (0, 0, 0)


def test_preprocess_decodes_files_like_the_catalog(zeroshot_encoder, tmp_path):
    path = tmp_path / "transparent.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(path)
    pixels = zeroshot_encoder.preprocessor(path)
    assert torch.allclose(pixels, torch.ones_like(pixels))  # white after (x - 0.5) / 0.5


def test_hub_only_model_offline_is_a_clear_error():
    with pytest.raises(WeightsNotFound, match="could not download pretrained weights for resnet18"):
        create_image_backbone("resnet18", "hub")


def test_model_without_offline_package_says_what_to_do():
    with pytest.raises(WeightsNotFound, match="no offline weights package is known for 'resnet18'"):
        create_image_backbone("resnet18", "package")


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsNotFound, match=str(tmp_path / "nope.pth")):
        create_image_backbone("tf_efficientnet_lite0", str(tmp_path / "nope.pth"))


def test_unknown_timm_name_is_a_clear_error():
    with pytest.raises(WeightsNotFound, match="no model named"):
        create_image_backbone("not_a_model", "package")


def test_local_checkpoint_with_timm_names_loads(tmp_path):
    source = create_image_backbone("tf_efficientnet_lite0", "package")
    torch.save(source.state_dict(), tmp_path / "lite0.pth")
    copy = create_image_backbone("tf_efficientnet_lite0", str(tmp_path / "lite0.pth"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(source.state_dict().values(), copy.state_dict().values(), strict=True)
    )


def test_hub_text_model_offline_is_a_clear_error():
    with pytest.raises(WeightsNotFound, match="could not be loaded"):
        load_text_model("sentence-transformers/all-mpnet-base-v2")


# --- registry --------------------------------------------------------------------------------
LOAD_BY_ALIAS = """
import base64, json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/imagesearch@champion")
texts = model.predict(pd.DataFrame({"text": ["a cat", "a cup of coffee"]}))
images = model.predict(pd.DataFrame({"image": [sys.argv[2]]}))
print(json.dumps({"texts": texts.tolist(), "images": images.tolist(), "dtype": str(texts.dtype)}))
"""


@pytest.fixture(scope="module")
def registered(zeroshot_encoder, tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("ws"))
    record = log_encoder(
        zeroshot_encoder, settings, run_name="test-v0", params={"note": "test"}, alias=CHAMPION
    )
    return settings, record


def test_registered_version_has_alias_tags_and_requirements(registered):
    settings, record = registered
    client = MlflowClient(settings.mlflow_tracking_uri)
    version = client.get_model_version("imagesearch", record.version)
    assert version.tags["encoder_kind"] == "zeroshot"
    assert alias_version(settings, CHAMPION) == record.version
    assert client.get_run(record.run_id).data.params["note"] == "test"
    assert settings.mlflow_artifacts_dir.exists() and any(settings.mlflow_artifacts_dir.rglob("encoder.json"))


def test_a_runs_registered_version_is_found_again_instead_of_registering_twice(registered):
    """A training run killed after registering, then resumed, reuses its version (no duplicate)."""
    settings, record = registered
    found = version_of_run(settings, record.run_id, alias="challenger")
    assert found == record and alias_version(settings, "challenger") == record.version
    assert version_of_run(settings, "0" * 32) is None


def test_load_by_alias_in_a_fresh_process_gives_identical_embeddings(registered, zeroshot_encoder):
    settings, _ = registered
    image = png_bytes(noise_image(5, (80, 60)))
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_BY_ALIAS, settings.mlflow_tracking_uri, base64.b64encode(image).decode()],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["dtype"] == "float32"
    # the pyfunc runs the ONNX graphs: the same vectors as the torch towers up to float rounding
    assert_same_vectors(
        np.float32(loaded["texts"]), zeroshot_encoder.encode_texts(["a cat", "a cup of coffee"])
    )
    assert_same_vectors(np.float32(loaded["images"]), zeroshot_encoder.encode_images([image]))


def float_graphs(settings: Settings) -> Settings:
    """`settings` with the float32 text graph: the one exported graphs must match torch with."""
    float32 = settings.model.model_copy(update={"text_precision": "float32"})
    return settings.model_copy(update={"model": float32})


def test_load_encoder_resolves_alias_version_and_uri(registered, zeroshot_encoder):
    settings, record = registered
    settings = float_graphs(settings)
    for reference in (CHAMPION, record.version, record.uri):
        encoder = load_encoder(reference, settings)
        assert encoder.runtime == "onnx:CPUExecutionProvider"
        assert_same_vectors(encoder.encode_texts(["tree"]), zeroshot_encoder.encode_texts(["tree"]))


def assert_same_vectors(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    assert (got * want).sum(axis=1).min() >= 0.9999


def test_registered_model_runs_its_onnx_graphs_like_torch_on_real_photos(
    registered, zeroshot_encoder, photos
):
    settings, _ = registered
    served = load_encoder(CHAMPION, float_graphs(settings))
    assert served.onnx is not None
    images = list(photos.values())
    assert_same_vectors(served.encode_images(images), zeroshot_encoder.encode_images(images))
    texts = [*CAPTIONS.values(), "a great blue heron standing in shallow water at dawn"]
    assert_same_vectors(served.encode_texts(texts), zeroshot_encoder.encode_texts(texts))
    torch_only = load_encoder(CHAMPION, settings.model_copy(update={"model": ModelSettings(runtime="torch")}))
    assert torch_only.onnx is None and torch_only.runtime == "torch:cpu"


def test_an_int8_text_graph_stays_near_the_float_one_and_ranks_the_same(registered, photos):
    """`model.text_precision=int8` quantizes the registered text graph at load (ONNX Runtime, CPU)."""
    settings, _ = registered
    int8 = settings.model_copy(update={"model": settings.model.model_copy(update={"text_precision": "int8"})})
    quantized, floating = load_encoder(CHAMPION, int8), load_encoder(CHAMPION, float_graphs(settings))
    assert quantized.runtime == "onnx:CPUExecutionProvider (text int8)"
    texts = [*CAPTIONS.values(), "a great blue heron standing in shallow water at dawn", "sneaker"]
    got, want = quantized.encode_texts(texts), floating.encode_texts(texts)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (got * want).sum(axis=1)
    assert cosines.min() >= 0.995 and cosines.min() < 0.99999, cosines  # close, and really quantized
    images = floating.encode_images(list(photos.values()))
    captions = quantized.encode_texts([CAPTIONS[name] for name in photos])
    assert list((images @ captions.T).argmax(axis=1)) == list(range(len(photos)))


def test_simulated_clicks_rank_with_the_float_graph_whatever_the_served_precision(
    registered, photos, tmp_path
):
    """Simulated clicks become training pairs: the service's int8 setting must not change them."""
    settings, _ = registered
    images = tmp_path / "images"
    images.mkdir()
    for name, photo in photos.items():
        photo.save(images / f"{name}.png")
    for seed in range(6):
        noise_image(seed).save(images / f"noise{seed}.png")
    build_folder_index(
        load_encoder(CHAMPION, float_graphs(settings)),
        images,
        settings.search_index_dir,
        model=CHAMPION,
        settings=settings,
    )
    ids = load_index(settings.search_index_dir).ids["id"]
    catalog = pd.DataFrame(
        {"id": ids, "tags": [["photo"] if i % 2 else ["photo", "pattern"] for i in ids.index]}
    )
    scores = {}
    for precision in ("float32", "int8"):
        served = settings.model_copy(
            update={"model": settings.model.model_copy(update={"text_precision": precision})}
        )
        log = ClickLog(f"sqlite:///{tmp_path}/clicks-{precision}.db")
        assert simulate_workspace_clicks(served, log, catalog) > 0
        tables = log.read()
        shown = tables.impressions.merge(tables.queries[["query_id", "query_text"]], on="query_id")
        scores[precision] = shown.sort_values(["query_text", "rank", "score"])[["image_id", "score"]]
    assert len(scores["int8"]) == len(scores["float32"]) > 0
    assert list(scores["int8"]["image_id"]) == list(scores["float32"]["image_id"])
    np.testing.assert_array_equal(scores["int8"]["score"].to_numpy(), scores["float32"]["score"].to_numpy())


def test_trained_towers_export_to_onnx_with_the_same_vectors(anchored, photos, tmp_path):
    """The anchored head with a non-zero residual, the text residual and raw features appended."""
    anchored = copy.deepcopy(anchored)  # the fixture stays untrained for the other tests
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in anchored.image_model.projection.residual.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        for parameter in anchored.text_model.head().residual.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    mean = torch.nn.functional.normalize(torch.rand(1280, generator=generator), dim=0)
    anchored.image_model.use_raw_transform(SQRT_CENTERED, mean)  # the rooted, centred raw block
    anchored.spec = replace(anchored.spec, raw_transform=SQRT_CENTERED)
    anchored.export_onnx(anchored.save(tmp_path / "encoder"))
    reloaded = Encoder.load(tmp_path / "encoder", "cpu", runtime="torch")
    assert reloaded.image_model.raw_transform == SQRT_CENTERED
    assert torch.equal(reloaded.image_model.raw_mean, mean)
    exported = Encoder.load(tmp_path / "encoder", "cpu", runtime="onnx")
    images = list(photos.values())
    assert_same_vectors(exported.encode_images(images), anchored.encode_images(images))
    assert_same_vectors(reloaded.encode_images(images), anchored.encode_images(images))
    texts = list(CAPTIONS.values())
    assert_same_vectors(exported.encode_texts(texts), anchored.encode_texts(texts))
    # the graph's second output: the pooled backbone features the backbone cache keeps
    pixels = anchored.preprocess(images)
    assert exported.onnx.has_features
    assert_same_vectors(
        normalized(exported.pooled_features(pixels)), normalized(anchored.pooled_features(pixels))
    )
    assert_same_vectors(
        exported.encode_features(exported.pooled_features(pixels)), anchored.encode_images(images)
    )


def normalized(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_encoders_on_one_frozen_trunk_share_a_backbone_key(anchored, two_tower, zeroshot_encoder):
    """v0, the anchored and the two-tower heads read the same pooled features: one key; a trained
    trunk is another key (its cached features would be wrong)."""
    assert anchored.backbone_key == two_tower.backbone_key == zeroshot_encoder.backbone_key
    changed = copy.deepcopy(two_tower)
    with torch.no_grad():
        changed.backbone.conv_head.weight.mul_(1.01)
    assert changed.backbone_key != two_tower.backbone_key
    reheaded = copy.deepcopy(two_tower)
    with torch.no_grad():
        reheaded.backbone.get_classifier().weight.mul_(1.01)  # the classifier reads features, not pixels
    assert reheaded.backbone_key == two_tower.backbone_key


def test_onnx_runtime_asked_for_without_graphs_is_a_clear_error(saved_encoder):
    with pytest.raises(OnnxUnavailable, match="has no ONNX graphs"):
        Encoder.load(saved_encoder, "cpu", runtime="onnx")


def test_pyfunc_rejects_unknown_columns(registered):
    _, record = registered
    import mlflow

    model = mlflow.pyfunc.load_model(record.uri)
    with pytest.raises(Exception, match=r"text|image"):
        model.predict(pd.DataFrame({"prompt": ["x"]}))


def test_unknown_alias_is_a_clear_error(tmp_path):
    from imagesearch.models.registry import RegistryError

    with pytest.raises(RegistryError, match="register a model first"):
        load_encoder(CHAMPION, Settings(home=tmp_path))


def test_a_broken_registry_is_an_error_not_a_missing_alias(tmp_path):
    """Read as "no champion", a registry failure would let register_v0 hand the alias to v0."""
    settings = Settings(home=tmp_path / "ws")
    client = connect(settings)
    assert alias_version(settings, CHAMPION) is None  # no model yet: a real "missing"
    client.create_registered_model(settings.model.registered_name)
    assert alias_version(settings, CHAMPION) is None  # a model without the alias: missing too
    database = settings.mlflow_dir / "mlflow.db"
    with sqlite3.connect(database) as db:
        db.execute("DROP TABLE registered_model_aliases")
    with pytest.raises(RegistryError, match="cannot read the alias 'champion'"):
        alias_version(settings, CHAMPION)


def test_the_sqrt_centered_raw_block_roots_centres_and_normalises(anchored, photos):
    tower = copy.deepcopy(anchored.image_model)
    with torch.inference_mode():
        features = tower.features(anchored.preprocess(list(photos.values())))
        plain = tower.raw_block(features)
        mean = torch.nn.functional.normalize(features.clamp(min=0).sqrt(), dim=-1).mean(dim=0)
        tower.use_raw_transform(SQRT_CENTERED, mean)
        centred = tower.raw_block(features)
    np.testing.assert_allclose(centred.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    expected = torch.nn.functional.normalize(
        torch.nn.functional.normalize(features.sqrt(), dim=-1) - mean, dim=-1
    )
    assert torch.allclose(centred, expected, atol=1e-6) and not torch.allclose(centred, plain, atol=0.05)
    with pytest.raises(ValueError, match="mean"):
        tower.use_raw_transform(SQRT_CENTERED)
    tower.use_raw_transform("plain")
    assert "raw_mean" not in dict(tower.named_buffers())


def test_a_class_mix_residual_corrects_class_names_and_round_trips(photos, tmp_path):
    """`MODEL__IMAGE_RESIDUAL=classes`: the image residual reads the bridge's top-k class mix; saved,
    reloaded and exported to ONNX it gives the same vectors as the module it came from."""
    encoder = build_trained_encoder(ModelSettings(image_residual="classes", specialist_dim=0), seed=0)
    projection = encoder.image_model.projection
    assert projection.residual.in_features == 1000
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        projection.residual.weight.copy_(torch.randn(projection.residual.weight.shape, generator=generator))
    images = list(photos.values())
    with torch.no_grad():
        features = encoder.image_model.features(encoder.preprocess(images))
        mix = projection.class_mix(features)
        expected = projection.anchor(features) + mix @ projection.residual.weight.T
        assert torch.allclose(projection(features), expected, atol=1e-5)
    assert (mix > 0).sum(dim=-1).tolist() == [projection.top_k] * len(images)
    encoder.export_onnx(encoder.save(tmp_path / "encoder"))
    assert json.loads((tmp_path / "encoder" / "encoder.json").read_text())["image_residual"] == "classes"
    for runtime in ("torch", "onnx"):
        reloaded = Encoder.load(tmp_path / "encoder", "cpu", runtime=runtime)
        assert_same_vectors(reloaded.encode_images(images), encoder.encode_images(images))
    with pytest.raises(ValueError, match="'features' or 'classes'"):
        ModelSettings(image_residual="pixels")


def test_a_classifier_residual_moves_the_class_mix_as_far_as_the_interpolation_and_round_trips(
    photos, tmp_path
):
    """`MODEL__CLASSIFIER_RESIDUAL`: a learned correction of the bridge's class logits, scaled by the
    interpolation (0 = the pretrained mix, which `anchor` always uses); saved, reloaded and exported to
    ONNX it gives the same vectors as the module it came from."""
    encoder = build_trained_encoder(ModelSettings(classifier_residual=True, specialist_dim=0), seed=0)
    projection = encoder.image_model.projection
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        weight = projection.classifier_residual.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 0.1)
    images = list(photos.values())
    with torch.no_grad():
        features = encoder.image_model.features(encoder.preprocess(images))
        corrected = projection.class_mix(features)
        assert not torch.allclose(corrected, projection.class_mix(features, corrected=False))
        set_interpolation(encoder.image_model, 0.0)
        assert torch.equal(projection.class_mix(features), projection.class_mix(features, corrected=False))
        assert torch.allclose(projection(features), projection.anchor(features), atol=1e-6)
    set_interpolation(encoder.image_model, 1.0)
    encoder.export_onnx(encoder.save(tmp_path / "encoder"))
    assert json.loads((tmp_path / "encoder" / "encoder.json").read_text())["classifier_residual"] is True
    for runtime in ("torch", "onnx"):
        reloaded = Encoder.load(tmp_path / "encoder", "cpu", runtime=runtime)
        assert_same_vectors(reloaded.encode_images(images), encoder.encode_images(images))


def test_a_collection_routed_specialist_block_speaks_only_in_an_index_of_a_collection_like_the_corpus(
    photos, tmp_path
):
    """`MODEL__SPECIALIST_ROUTING=collection`: every image vector carries the block; a collection whose
    median similarity to the training views reaches the router's threshold is indexed as it is, one
    below it with the anchored model's vectors - the block's columns zeroed, the raw block made and
    weighed as chosen for outside collections - so every query ranks it by the anchored model.
    The manifest records the decision, a live update follows it, and the router survives save and ONNX."""
    settings = ModelSettings(head="anchored", raw_feature_weight=1.0, specialist_dim=16)  # routed by default
    plain = build_trained_encoder(settings.model_copy(update={"specialist_dim": 0}))
    routed = build_trained_encoder(settings)
    assert routed.routes and not plain.routes
    for tower in (routed.image_model, routed.text_model):
        set_specialist_weight(tower, 1.0)
    routed.image_model.projection.specialist.gate.threshold.fill_(-2.0)  # every image carries the block
    images, texts = list(photos.values()), list(CAPTIONS.values())
    noise = [noise_image(seed, (224, 224)) for seed in range(4)]
    router = routed.image_model.router
    raw = routed.image_model.raw_block(torch.from_numpy(routed.pooled_features(routed.preprocess(images))))
    router.fit(raw, seed=0)
    router.threshold.fill_(float(router.similarity(raw).min()) - 0.05)
    columns = routed.specialist_columns()
    assert columns.stop - columns.start == 17 and columns.stop == routed.dim - 1280
    vectors = routed.encode_images(images)
    kept, inside = route_collection(routed, vectors)
    assert inside is True and np.array_equal(kept, vectors) and np.abs(vectors[:, columns]).sum() > 0
    outside_vectors, inside = route_collection(routed, routed.encode_images(noise))
    assert inside is False and not outside_vectors[:, columns].any()
    anchored = np.delete(outside_vectors, np.arange(columns.start, columns.stop), axis=1)
    np.testing.assert_allclose(
        anchored, plain.encode_images(noise), atol=1e-5
    )  # the anchored model's vectors
    scores = routed.encode_texts(texts) @ outside_vectors.T
    ratio = scores / (plain.encode_texts(texts) @ plain.encode_images(noise).T)
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-4)  # so its ranking, for every text
    # as validation may choose for outside collections: another raw block, at another weight
    routed.spec = replace(routed.spec, outside_raw_transform=SQRT_CENTERED, outside_raw_weight=3.0)
    rooted, _ = route_collection(routed, routed.encode_images(noise))
    plain.image_model.use_raw_transform(SQRT_CENTERED, router.raw_mean)
    plain.image_model.raw_feature_weight = 3.0
    anchored = np.delete(rooted, np.arange(columns.start, columns.stop), axis=1)
    np.testing.assert_allclose(anchored, plain.encode_images(noise), atol=1e-5)  # remade from the plain one
    folder = tmp_path / "noise"
    folder.mkdir()
    for seed, picture in enumerate(noise):
        picture.save(folder / f"noise{seed}.png")
    manifest = build_folder_index(routed, folder, tmp_path / "index", model="routed", settings=Settings())
    assert manifest.extra["specialist"] == "outside"
    assert manifest.extra["zeroed_columns"] == [columns.start, columns.stop]
    assert manifest.extra["anchored_scale"] == pytest.approx(np.sqrt(2.0))
    assert manifest.extra["outside_raw"] == SQRT_CENTERED and manifest.extra["outside_raw_scale"] == 3.0
    assert not load_index(tmp_path / "index").candidate_vectors(np.arange(4))[:, columns].any()
    added = as_base(routed, routed.encode_images(noise), manifest.extra)  # a live update routes as its base
    np.testing.assert_allclose(added, rooted, atol=1e-6)
    assert np.array_equal(as_base(None, vectors, {"specialist": "inside"}), vectors)
    mark_routing(tmp_path / "embeddings" / "routed", columns)  # the backfill marks what the index routes
    assert routes(tmp_path / "embeddings" / "routed") and not routes(tmp_path / "embeddings" / "plain")
    routed.export_onnx(routed.save(tmp_path / "routed"))
    for runtime in ("torch", "onnx"):
        reloaded = Encoder.load(tmp_path / "routed", "cpu", runtime=runtime)
        assert reloaded.routes and torch.equal(reloaded.image_model.router.threshold, router.threshold)
        assert_same_vectors(route_collection(reloaded, reloaded.encode_images(noise))[0], rooted)
    with pytest.raises(ValueError, match="raw block"):
        build_trained_encoder(settings.model_copy(update={"raw_feature_weight": 0}))
    routed.spec = replace(routed.spec, raw_transform=SQRT_CENTERED)  # a stored block the router cannot read
    with pytest.raises(ValueError, match="store its raw block plain"):
        route_collection(routed, vectors)


def test_a_shut_domain_gate_leaves_the_anchored_ranking_and_an_open_one_adds_the_specialist(photos, tmp_path):
    """The specialist block counts only where the domain gate opens: shut, every text->image score is
    the anchored model's times one constant (the same ranking); open, the block's own scores add in.
    Saved, reloaded and exported to ONNX, the gate and the block give the same vectors."""
    plain = build_trained_encoder(ModelSettings(head="anchored", raw_feature_weight=1.0, specialist_dim=0))
    gated = build_trained_encoder(
        ModelSettings(head="anchored", raw_feature_weight=1.0, specialist_dim=16, specialist_routing="image")
    )
    assert gated.dim == plain.dim + 17  # the block and its filler column
    specialist = gated.image_model.projection.specialist
    set_specialist_weight(gated.image_model, 1.0)
    set_specialist_weight(gated.text_model, 1.0)
    images, texts = list(photos.values()), list(CAPTIONS.values())
    shut = gated.encode_texts(texts) @ gated.encode_images(images).T
    ratio = shut / (plain.encode_texts(texts) @ plain.encode_images(images).T)
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-4)
    features = torch.from_numpy(gated.pooled_features(gated.preprocess(images)))
    specialist.gate.fit(features[:2], seed=0)
    threshold = float(specialist.gate.similarity(features).quantile(0.1))
    assert 0 < threshold < 1
    specialist.gate.threshold.fill_(threshold)
    assert (specialist.gate(features[:2]) > 0.5).all()  # the images it was fitted on are inside
    opened = gated.encode_texts(texts) @ gated.encode_images(images).T
    assert not np.allclose(opened / (plain.encode_texts(texts) @ plain.encode_images(images).T), ratio[0, 0])
    gated.export_onnx(gated.save(tmp_path / "gated"))
    reloaded = Encoder.load(tmp_path / "gated", "cpu", runtime="torch")
    exported = Encoder.load(tmp_path / "gated", "cpu", runtime="onnx")
    for loaded in (reloaded, exported):
        assert_same_vectors(loaded.encode_images(images), gated.encode_images(images))
        assert_same_vectors(loaded.encode_texts(texts), gated.encode_texts(texts))
