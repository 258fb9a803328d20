"""Registered encoders: logging one as a pyfunc model and registering its version, the v0 baseline,
aliases, and loading an encoder from any reference (v0, a folder, a version, an alias).

An encoder is logged as a pyfunc model (input: a DataFrame with a ``text`` column, or an ``image``
column of encoded image bytes, or an ``image_path`` column; output: L2-normalised float32 vectors),
registered under one name, and addressed by alias (``models:/imagesearch@champion``).
"""

from __future__ import annotations

import base64
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec

from imagesearch.models.builders import build_zeroshot_encoder
from imagesearch.models.encoders import Encoder
from imagesearch.models.registry.store import RegistryError, connect, tracked_run
from imagesearch.settings import Settings

CHAMPION = "champion"


CHALLENGER = "challenger"


V0 = "v0"


ONNX_TAG = "onnx"  # "true" when the registered model carries ONNX graphs of both towers


RUNTIME_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "pillow",
    "onnxruntime",
)


@dataclass(frozen=True, slots=True)
class RegisteredEncoder:
    run_id: str
    version: str
    uri: str


# MLflow asks for type hints on predict (forcing its warning on with its own filter); ours takes three
# alternative columns, which the logged signature describes instead.
with warnings.catch_warnings():
    warnings.showwarning = lambda *args, **kwargs: None

    class EncoderPyfunc(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper: texts or images in, unit vectors out."""

        def load_context(self, context) -> None:
            self.encoder = Encoder.load(Path(context.artifacts["encoder"]))

        def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer from them
            if "text" in model_input.columns:
                return self.encoder.encode_texts(model_input["text"].astype(str).tolist())
            if "image" in model_input.columns:
                return self.encoder.encode_images([_as_bytes(value) for value in model_input["image"]])
            if "image_path" in model_input.columns:
                return self.encoder.encode_images([Path(p) for p in model_input["image_path"]])
            raise ValueError(
                f"expected a 'text', 'image' or 'image_path' column, got {list(model_input.columns)}"
            )


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else base64.b64decode(value)


def signature(dim: int) -> ModelSignature:
    """One of the three input columns per call; image bytes travel base64-encoded."""
    inputs = Schema([ColSpec("string", column, required=False) for column in ("text", "image", "image_path")])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]))


def pip_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME_PACKAGES]


def log_encoder(
    encoder: Encoder,
    settings: Settings,
    *,
    run_name: str,
    params: dict | None = None,
    metrics: dict | None = None,
    tags: dict | None = None,
    alias: str | None = None,
) -> RegisteredEncoder:
    """Log the encoder as a pyfunc in a new MLflow run, register a new version, optionally alias it."""
    with tracked_run(settings, run_name=run_name, params=params, tags=tags):
        mlflow.log_metrics(metrics or {})
        return register_encoder(encoder, settings, alias=alias)


def register_encoder(encoder: Encoder, settings: Settings, *, alias: str | None = None) -> RegisteredEncoder:
    """Log the encoder as a pyfunc in the active run, register it as a new version, optionally alias it."""
    client = connect(settings)
    name = settings.model.registered_name
    run = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="imagesearch-encoder-") as scratch:
        mlflow.log_params({"encoder_kind": encoder.spec.kind, "dim": encoder.dim})
        mlflow.set_tag("encoder_kind", encoder.spec.kind)
        info = mlflow.pyfunc.log_model(
            name="encoder",
            python_model=EncoderPyfunc(),
            artifacts={"encoder": str(_saved_with_graphs(encoder, Path(scratch) / "encoder", settings))},
            pip_requirements=pip_requirements(),
            signature=signature(encoder.dim),
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, "encoder_kind", encoder.spec.kind)
    client.set_model_version_tag(name, version, ONNX_TAG, str(settings.model.export_onnx).lower())
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return RegisteredEncoder(run.info.run_id, version, f"models:/{name}/{version}")


def _saved_with_graphs(encoder: Encoder, folder: Path, settings: Settings) -> Path:
    """The encoder's files plus (by default) its ONNX graphs: what serving and backfill run."""
    encoder.save(folder)
    if settings.model.export_onnx:
        encoder.export_onnx(folder)
    return folder


def version_of_run(settings: Settings, run_id: str, *, alias: str | None = None) -> RegisteredEncoder | None:
    """The version a run already registered (a resumed run killed after registering must not register
    a second one), re-aliased; None when the run has registered nothing."""
    client = connect(settings)
    name = settings.model.registered_name
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not found:
        return None
    version = str(max(int(v.version) for v in found))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return RegisteredEncoder(run_id, version, f"models:/{name}/{version}")


def register_v0(settings: Settings, *, make_champion_if_none: bool = True) -> RegisteredEncoder:
    """Register the zero-shot baseline once per configuration; make it champion when there is none yet."""
    params = {
        key: str(value)
        for key, value in settings.model.model_dump(
            include={
                "image_backbone",
                "image_weights",
                "image_size",
                "text_model",
                "zeroshot_top_k",
                "zeroshot_prompts",
            }
        ).items()
    }
    alias = CHAMPION if make_champion_if_none and alias_version(settings, CHAMPION) is None else None
    existing = _find_baseline(settings, params)
    if existing is not None:
        if alias:
            MlflowClient().set_registered_model_alias(settings.model.registered_name, alias, existing.version)
        return existing
    encoder = build_zeroshot_encoder(settings.model)
    return log_encoder(
        encoder, settings, run_name="v0-zeroshot", params=params, tags={"baseline": V0}, alias=alias
    )


def _find_baseline(settings: Settings, params: dict[str, str]) -> RegisteredEncoder | None:
    """The registered v0 built with exactly these settings, if any: rebuilding it would change nothing."""
    client = connect(settings)
    name = settings.model.registered_name
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("encoder_kind") != "zeroshot" or not version.run_id:
            continue
        if settings.model.export_onnx and version.tags.get(ONNX_TAG) != "true":
            continue  # registered before ONNX export: a new one carries the graphs serving runs
        run_params = client.get_run(version.run_id).data.params
        if all(run_params.get(key) == value for key, value in params.items()):
            return RegisteredEncoder(
                version.run_id, str(version.version), f"models:/{name}/{version.version}"
            )
    return None


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version `alias` points at; None only when the model or the alias does not exist.

    Any other registry failure raises: read as "no champion", it would let v0 take the alias.
    """
    client = connect(settings)
    try:
        return str(client.get_model_version_by_alias(settings.model.registered_name, alias).version)
    except MlflowException as error:
        if _is_missing_alias(error):
            return None
        raise RegistryError(f"cannot read the alias {alias!r} from the registry: {error}") from error


def _is_missing_alias(error: MlflowException) -> bool:
    if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # no such registered model
        return True
    message = str(error).lower()  # MLflow reports an unknown alias as an invalid parameter
    return error.error_code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message


def load_encoder(reference: str, settings: Settings, text_precision: str | None = None) -> Encoder:
    """An encoder from 'v0' (built from offline weights), a saved encoder folder, or an MLflow model URI.

    A bare alias ('champion') or version number means that model of the registered name.
    `text_precision` overrides `settings.model.text_precision` (a serving knob) for this encoder.
    """
    if text_precision is not None:
        model = settings.model.model_copy(update={"text_precision": text_precision})
        settings = settings.model_copy(update={"model": model})
    if reference == V0:
        return build_zeroshot_encoder(settings.model)
    model = settings.model
    folder = encoder_folder(reference, settings)
    return Encoder.load(folder, model.device, model.runtime, model.onnx_threads, model.text_precision)


def encoder_folder(reference: str, settings: Settings) -> Path:
    """The local encoder folder of a saved-folder path or an MLflow model reference (downloaded)."""
    folder = Path(reference).expanduser()
    if (folder / "encoder.json").is_file():
        return folder
    uri = _model_uri(reference, settings)
    connect(settings)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except (MlflowException, OSError) as error:
        raise RegistryError(
            f"cannot load {uri}: {str(error).splitlines()[0]} — register a model first "
            "(`imagesearch model register-v0`) or pass --model v0"
        ) from error
    return _encoder_folder(local, uri)


def _encoder_folder(model_folder: Path, uri: str) -> Path:
    """The encoder files inside a downloaded pyfunc model. They are read as JSON, safetensors/HF and
    `torch.load(weights_only=True)`: the pickled python_model beside them is never unpickled here."""
    try:
        flavor = yaml.safe_load((model_folder / "MLmodel").read_text())["flavors"]["python_function"]
        folder = model_folder / flavor["artifacts"]["encoder"]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise RegistryError(f"{uri} is not an imagesearch encoder model ({error})") from error
    if not (folder / "encoder.json").is_file():
        raise RegistryError(f"{uri} has no encoder files at {folder}")
    return folder


def pin_reference(reference: str, settings: Settings) -> str:
    """A reference that will not move: an alias becomes the version it points at now."""
    if reference == V0 or (Path(reference).expanduser() / "encoder.json").is_file():
        return reference
    uri = _model_uri(reference, settings)
    if "@" not in uri:
        return uri
    alias = uri.rsplit("@", 1)[1]
    version = alias_version(settings, alias)
    if version is None:
        raise RegistryError(
            f"no model has the alias {alias!r}: register one first (`imagesearch model register-v0`)"
        )
    return f"models:/{settings.model.registered_name}/{version}"


def _model_uri(reference: str, settings: Settings) -> str:
    if reference.startswith(("models:/", "runs:/")):
        return reference
    return f"models:/{settings.model.registered_name}{'/' if reference.isdigit() else '@'}{reference}"


def pinned_alias(settings: Settings, alias: str) -> str | None:
    """`models:/<name>/<version>` the alias points at now, or None."""
    version = alias_version(settings, alias)
    return f"models:/{settings.model.registered_name}/{version}" if version else None
