"""Building encoders from settings: v0 from pretrained parts alone, and a trained kind's starting
point (its heads fresh; the anchored head starts as v0)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from timm.data import ImageNetInfo
from torch import nn

from imagesearch.models.backbones import create_image_backbone, load_text_model
from imagesearch.models.encoders import (
    ANCHORED,
    ZEROSHOT,
    Encoder,
    EncoderSpec,
    resolve_device,
    trained_towers,
)
from imagesearch.models.preprocess import Preprocessor
from imagesearch.models.towers import COLLECTION, TextTower, ZeroPadded, ZeroShotImageBridge
from imagesearch.settings import ModelSettings


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (first two synonyms), from timm's bundled metadata."""
    info = ImageNetInfo()
    return [", ".join(info.index_to_description(i).split(", ")[:2]) for i in range(1000)]


def build_zeroshot_encoder(settings: ModelSettings) -> Encoder:
    """v0: pretrained classifier bridged into the pretrained text space through prompted class names."""
    backbone = create_image_backbone(settings.image_backbone, settings.image_weights)
    if getattr(backbone, "num_classes", 0) != 1000:
        raise ValueError(
            f"the zero-shot baseline needs an ImageNet-1k classifier; {settings.image_backbone} has "
            f"{getattr(backbone, 'num_classes', 0)} classes"
        )
    transformer, tokenizer = load_text_model(settings.text_model)
    text_tower = TextTower(transformer, nn.Identity())
    preprocessor = Preprocessor.for_backbone(backbone, settings.image_size)
    dim = transformer.config.hidden_size
    spec = EncoderSpec(
        ZEROSHOT,
        settings.image_backbone,
        settings.image_size,
        preprocessor.mean,
        preprocessor.std,
        dim,
        settings.text_max_length,
        settings.zeroshot_top_k,
    )
    placeholder = ZeroShotImageBridge(backbone, torch.zeros(1000, dim), settings.zeroshot_top_k)
    encoder = Encoder(spec, placeholder, text_tower, tokenizer, resolve_device(settings.device))
    class_embeddings = prompt_embeddings(encoder, imagenet_class_names(), settings.zeroshot_prompts)
    encoder.image_model.class_embeddings.copy_(torch.from_numpy(class_embeddings))
    return encoder


def prompt_embeddings(encoder: Encoder, names: list[str], prompts: Sequence[str]) -> np.ndarray:
    """Mean of the unit text embeddings of each name under every prompt, re-normalised."""
    per_prompt = [
        encoder.encode_texts([prompt.format(name) for name in names], batch_size=256) for prompt in prompts
    ]
    mean = np.mean(per_prompt, axis=0)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def _specialist_dim(settings: ModelSettings) -> int:
    """The specialist block's width: a part of the anchored head (the 'two_tower' head has none)."""
    if settings.head != ANCHORED or not settings.specialist_dim:
        return 0
    if not settings.text_residual:
        raise ValueError(
            "the specialist block needs the anchored head's text residual: set model.text_residual "
            "or model.specialist_dim=0"
        )
    if settings.specialist_routing == COLLECTION and not settings.raw_feature_weight:
        raise ValueError(
            "routing the specialist block per collection reads the raw block: set a raw_feature_weight "
            "or model.specialist_dim=0"
        )
    return settings.specialist_dim


def build_trained_encoder(settings: ModelSettings, seed: int = 0) -> Encoder:
    """The starting point of training: pretrained backbones with the heads of `settings.head`.

    ``anchored``: v0's bridge (class-name embeddings computed here) with a zero residual, so the
    untrained model *is* v0; ``two_tower``: freshly initialised linear heads.
    """
    torch.manual_seed(seed)
    backbone = create_image_backbone(settings.image_backbone, settings.image_weights)
    transformer, tokenizer = load_text_model(settings.text_model)
    preprocessor = Preprocessor.for_backbone(backbone, settings.image_size)
    hidden = transformer.config.hidden_size
    anchored = settings.head == ANCHORED
    specialist_dim = _specialist_dim(settings)
    specialist = specialist_dim + 1 if specialist_dim else 0  # + the filler column
    shared = hidden + specialist if anchored else settings.embed_dim
    raw_width = backbone.num_features if settings.raw_feature_weight else 0
    spec = EncoderSpec(
        settings.head,
        settings.image_backbone,
        settings.image_size,
        preprocessor.mean,
        preprocessor.std,
        shared + raw_width,
        settings.text_max_length,
        settings.zeroshot_top_k,
        raw_feature_weight=settings.raw_feature_weight,
        text_residual=settings.text_residual and anchored,
        image_residual=settings.image_residual,
        specialist_dim=specialist_dim,
        classifier_residual=settings.classifier_residual and anchored,
        specialist_routing=settings.specialist_routing,
    )
    if anchored and getattr(backbone, "num_classes", 0) != 1000:
        raise ValueError(
            f"the anchored head needs an ImageNet-1k classifier; {settings.image_backbone} has none"
        )
    image_model, text_head = trained_towers(spec, backbone, hidden)
    text_tower = TextTower(transformer, ZeroPadded(text_head, raw_width))
    encoder = Encoder(spec, image_model, text_tower, tokenizer, resolve_device(settings.device))
    if anchored:
        names = prompt_embeddings(encoder, imagenet_class_names(), settings.zeroshot_prompts)
        image_model.projection.class_embeddings.copy_(torch.from_numpy(names[:, :hidden]))
    return encoder
