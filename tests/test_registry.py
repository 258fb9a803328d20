"""MLflow round trip: log the encoder as a pyfunc, register, alias, load by alias in a fresh process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from imagesearch.models.registry import CHAMPION, alias_version, load_encoder, log_encoder
from imagesearch.settings import Settings
from tests.conftest import noise_image, png_bytes

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
    np.testing.assert_array_equal(
        np.float32(loaded["texts"]), zeroshot_encoder.encode_texts(["a cat", "a cup of coffee"])
    )
    np.testing.assert_array_equal(np.float32(loaded["images"]), zeroshot_encoder.encode_images([image]))


def test_load_encoder_resolves_alias_version_and_uri(registered, zeroshot_encoder):
    settings, record = registered
    for reference in (CHAMPION, record.version, record.uri):
        encoder = load_encoder(reference, settings)
        np.testing.assert_array_equal(encoder.encode_texts(["tree"]), zeroshot_encoder.encode_texts(["tree"]))


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
