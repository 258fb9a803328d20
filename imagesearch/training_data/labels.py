"""Labels from the pretrained ImageNet classifier: the top class and its probability per image."""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import DataLoader

from imagesearch.common.images import DecodeLimits
from imagesearch.common.progress import Progress, progress_bar
from imagesearch.embeddings.reader import CatalogImages, collate, default_workers
from imagesearch.models.backbones import create_image_backbone
from imagesearch.models.encoders import imagenet_class_names, resolve_device
from imagesearch.models.preprocess import Preprocessor
from imagesearch.settings import ModelSettings


def classifier_labels(
    images: pd.DataFrame,
    settings: ModelSettings,
    limits: DecodeLimits,
    *,
    batch_size: int = 32,
    progress: Progress = True,
) -> pd.DataFrame:
    """id, label (ImageNet class name), probability of the top class; undecodable images are left out."""
    classifier = create_image_backbone(settings.image_backbone, settings.image_weights)
    if getattr(classifier, "num_classes", 0) != 1000:
        raise ValueError(
            f"{settings.image_backbone} is not an ImageNet-1k classifier: turn the classifier source off"
        )
    device = torch.device(resolve_device(settings.device))
    classifier = classifier.to(device, memory_format=torch.channels_last).eval()
    preprocessor = Preprocessor.for_backbone(classifier, settings.image_size)
    paths = images["path"].tolist()
    loader = DataLoader(
        CatalogImages(paths, preprocessor, limits),
        batch_size=batch_size,
        num_workers=default_workers(),
        collate_fn=collate,
        prefetch_factor=4,
    )
    names = imagenet_class_names()
    rows = []
    bar = progress_bar(progress, total=len(paths), desc="classifying", unit="img")
    with torch.inference_mode():
        for positions, pixels, failed in loader:
            bar.update(len(positions) + len(failed))
            if pixels is None:
                continue
            pixels = pixels.to(device, memory_format=torch.channels_last)
            top = classifier(pixels).softmax(dim=-1).max(dim=-1)
            for position, probability, index in zip(positions, top.values, top.indices, strict=True):
                rows.append((images["id"].iloc[position], names[int(index)], float(probability)))
    bar.close()
    return pd.DataFrame(rows, columns=["id", "label", "probability"])
