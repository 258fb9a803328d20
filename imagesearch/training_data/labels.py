"""Labels from the pretrained ImageNet classifier: the top class and its probability per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imagesearch.common.images import DecodeLimits
from imagesearch.common.progress import Progress
from imagesearch.embeddings.backbone_cache import cached_features, open_cache
from imagesearch.models.backbones import backbone_key, create_image_backbone
from imagesearch.models.builders import imagenet_class_names
from imagesearch.models.encoders import resolve_device
from imagesearch.models.preprocess import Preprocessor
from imagesearch.settings import ModelSettings


def classifier_labels(
    images: pd.DataFrame,
    settings: ModelSettings,
    limits: DecodeLimits,
    *,
    features: Path | None = None,
    batch_size: int = 32,
    progress: Progress = True,
) -> pd.DataFrame:
    """id, label (ImageNet class name), probability of the top class; undecodable images are left out.
    The classifier head runs on pooled backbone features, read from the cache in `features` when an
    earlier backfill on the same trunk left them there."""
    classifier = create_image_backbone(settings.image_backbone, settings.image_weights)
    if getattr(classifier, "num_classes", 0) != 1000:
        raise ValueError(
            f"{settings.image_backbone} is not an ImageNet-1k classifier: turn the classifier source off"
        )
    device = torch.device(resolve_device(settings.device))
    classifier = classifier.to(device, memory_format=torch.channels_last).eval()
    preprocessor = Preprocessor.for_backbone(classifier, settings.image_size)

    @torch.inference_mode()
    def pooled(pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(device, memory_format=torch.channels_last)
        features = classifier.forward_head(classifier.forward_features(pixels), pre_logits=True)
        return features.float().cpu().numpy()

    found, _ = cached_features(
        images["path"].tolist(),
        pooled,
        preprocessor,
        open_cache(features, backbone_key(classifier, preprocessor)),
        limits,
        batch_size=batch_size,
        progress=progress,
    )
    if not found:
        return pd.DataFrame(columns=["id", "label", "probability"])
    positions = sorted(found)
    with torch.inference_mode():
        rows = torch.from_numpy(np.stack([found[p] for p in positions])).to(device)
        top = classifier.get_classifier()(rows).float().softmax(dim=-1).max(dim=-1)
    names = imagenet_class_names()
    return pd.DataFrame(
        {
            "id": images["id"].iloc[positions].tolist(),
            "label": [names[int(i)] for i in top.indices],
            "probability": top.values.cpu().numpy().astype(float),
        }
    )
