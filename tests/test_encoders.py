"""The two towers and the zero-shot baseline with the real offline weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from imagesearch.models.backbones import WeightsNotFound, create_image_backbone, load_text_model
from imagesearch.models.encoders import Encoder, build_two_tower_encoder, imagenet_class_names
from imagesearch.models.preprocess import letterbox
from imagesearch.settings import ModelSettings

PHOTOS = {"cat": data.chelsea, "coffee": data.coffee, "rocket": data.rocket}
CAPTIONS = {"cat": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket launch"}


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(load()) for name, load in PHOTOS.items()}


@pytest.fixture(scope="module")
def two_tower() -> Encoder:
    return build_two_tower_encoder(ModelSettings(embed_dim=32), seed=0)


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
