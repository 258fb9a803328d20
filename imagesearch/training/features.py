"""The feature cache: what the frozen part of the image backbone (and the frozen text transformer)
makes of every training view, computed once and reused by every epoch and by a resumed run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from imagesearch.common.images import DecodeLimits
from imagesearch.common.io import write_atomic
from imagesearch.common.progress import Progress, progress_bar
from imagesearch.embeddings.backbone_cache import cached_features, open_cache
from imagesearch.embeddings.reader import collate, default_workers
from imagesearch.models.encoders import Encoder
from imagesearch.models.onnx_runtime import cpu_image_session, providers_for
from imagesearch.settings import TrainingSettings
from imagesearch.training.augment import ImageViews
from imagesearch.training.examples import IndexedExamples
from imagesearch.training.validation import ValidationSet


def split_backbone(backbone: nn.Module, stages: int) -> tuple[nn.Module, nn.Module]:
    """(frozen trunk, trainable top): the top is the last `stages` stages + head conv + pooling.

    The modules are the backbone's own, so training the top trains the encoder.
    """
    if stages == 0:
        return _PooledFeatures(backbone), nn.Identity()
    parts = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")
    if not all(hasattr(backbone, part) for part in parts):
        raise ValueError(
            f"unfreezing stages is supported for EfficientNet/MobileNet-style timm backbones, not "
            f"{type(backbone).__name__}: set training.unfreeze_stages=0"
        )
    count = len(backbone.blocks)
    if stages > count:
        raise ValueError(f"unfreeze_stages={stages} but the backbone has {count} stages")
    trunk = nn.Sequential(backbone.conv_stem, backbone.bn1, *backbone.blocks[: count - stages])
    top = nn.Sequential(
        *backbone.blocks[count - stages :], backbone.conv_head, backbone.bn2, backbone.global_pool
    )
    return trunk, top


class _PooledFeatures(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(pixels), pre_logits=True)


@dataclass(slots=True)
class FeatureCache:
    train: torch.Tensor  # (images, views, *trunk output) float16
    val: torch.Tensor  # (val images, *trunk output) float16
    texts: torch.Tensor  # (texts, hidden) float32: pooled, frozen transformer outputs
    failed: dict[str, str]  # image id -> why its views could not be made
    outside: dict[str, torch.Tensor] = field(default_factory=dict)  # out-of-domain val corpora
    texts_key: str = ""  # which text list `texts` holds, in order


def build_feature_cache(
    encoder: Encoder,
    trunk: nn.Module,
    train_images: pd.Series,
    validation: ValidationSet,
    texts: list[str],
    settings: TrainingSettings,
    limits: DecodeLimits,
    progress: Progress,
    outside_paths: dict[str, list[str]] | None = None,
    backbone_features: Path | None = None,
) -> FeatureCache:
    """`train_images` maps image id -> path, in the order of the cache's rows; `outside_paths` are
    the out-of-domain validation corpora (clean views, like the val split). Clean views of a frozen
    pooled trunk come from (and go to) the backbone cache in `backbone_features`, when given: the val
    split's images were embedded by the first backfill already."""

    def views_of(paths: list[str], ids: list[str], views: int, augment: bool) -> ImageViews:
        return ImageViews(
            paths, ids, encoder.preprocessor, limits, views=views, augment=augment, seed=settings.seed
        )

    run = trunk_runner(encoder, trunk)
    pooled = isinstance(trunk, _PooledFeatures)
    cache = open_cache(backbone_features, encoder.backbone_key) if pooled else None

    def clean(paths: list[str], ids: list[str]) -> tuple[torch.Tensor, dict[str, str]]:
        if cache is None:
            return _trunk_features(run, views_of(paths, ids, 1, False), progress)
        found, bad = cached_features(
            paths, lambda pixels: run(pixels).numpy(), encoder.preprocessor, cache, limits, progress=progress
        )
        out = torch.zeros(len(paths), 1, encoder.backbone.num_features, dtype=torch.float16)
        for position, row in found.items():
            out[position, 0] = torch.from_numpy(row)
        return out, {ids[position]: why for position, why in bad.items()}

    train, failed = _trunk_features(
        run, views_of(train_images.tolist(), train_images.index.tolist(), settings.views, True), progress
    )
    val, failed_val = clean(validation.paths, validation.image_ids)
    outside = {name: clean(paths, paths)[0][:, 0] for name, paths in (outside_paths or {}).items()}
    return FeatureCache(
        train, val[:, 0], text_features(encoder, texts), {**failed, **failed_val}, outside, texts_key(texts)
    )


@torch.inference_mode()
def text_features(encoder: Encoder, texts: list[str]) -> torch.Tensor:
    pooled = [
        encoder.text_model.pooled(**encoder.tokenize(texts[i : i + 256])).float().cpu()
        for i in range(0, len(texts), 256)
    ]
    return torch.cat(pooled) if pooled else torch.zeros(0, 1)


def texts_key(texts: list[str]) -> str:
    return hashlib.blake2b("\n".join(texts).encode(), digest_size=8).hexdigest()


TrunkRunner = Callable[[torch.Tensor], torch.Tensor]  # pixels (CPU) -> trunk outputs (CPU, float32)


def trunk_runner(encoder: Encoder, trunk: nn.Module) -> TrunkRunner:
    """How the views go through the frozen trunk: ONNX Runtime for the pooled backbone on a CPU (about
    twice torch eager's views/s on 2 cores), torch otherwise (a GPU, or stages to train on top)."""
    if isinstance(trunk, _PooledFeatures) and encoder.device.type == "cpu" and providers_for("cpu"):
        session = cpu_image_session(trunk, encoder.spec.image_size)
        return lambda pixels: torch.from_numpy(session(pixels.numpy()))

    def on_torch(pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_for(encoder.device):
            flat = pixels.to(encoder.device, memory_format=torch.channels_last)
            return trunk(flat).float().cpu()

    return on_torch


def _trunk_features(
    run: TrunkRunner, dataset: ImageViews, progress: Progress
) -> tuple[torch.Tensor, dict[str, str]]:
    """Trunk outputs of every view of every image (zeros for an undecodable one) + failures by id."""
    views, failed = dataset.views, {}
    loader = DataLoader(
        dataset,
        batch_size=max(1, 64 // views),
        num_workers=default_workers(),
        collate_fn=collate,
        prefetch_factor=4,
    )
    out: torch.Tensor | None = None
    total = len(dataset) * views
    bar = progress_bar(progress, total=total, desc="caching features", unit="view")
    for positions, pixels, bad in loader:
        failed.update({dataset.ids[p]: reason for p, reason in bad})
        if pixels is None:
            continue
        features = run(pixels.flatten(0, 1)).to(torch.float16)
        features = features.view(len(positions), views, *features.shape[1:])
        if out is None:
            out = torch.zeros(len(dataset), views, *features.shape[2:], dtype=torch.float16)
        out[positions] = features
        bar.update(len(positions) * views)
    bar.close()
    if out is None:
        raise ValueError("no training image could be decoded")
    return out, failed


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def load_or_build_cache(
    encoder: Encoder,
    trunk: nn.Module,
    data: IndexedExamples,
    catalog: pd.DataFrame,
    validation: ValidationSet,
    settings: TrainingSettings,
    limits: DecodeLimits,
    work_dir: Path,
    progress: Progress,
    outside_paths: dict[str, list[str]] | None = None,
    backbone_features: Path | None = None,
) -> FeatureCache:
    """The cache of these exact images, views and trunk: shared by every run in `work_dir`'s parent
    folder that would compute the same features (e.g. ablation recipes that differ only in the heads)."""
    stages = settings.unfreeze_stages if settings.unfrozen_epochs else 0
    key = _cache_key(encoder, stages, settings, data.image_ids, validation.paths, outside_paths or {})
    path = work_dir.parent / f"features-{key}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        cache = FeatureCache(**{**saved, "failed": dict(saved["failed"]), "outside": dict(saved["outside"])})
        if cache.texts_key != texts_key(data.texts):  # other validation queries: re-embed the texts only
            cache.texts, cache.texts_key = text_features(encoder, data.texts), texts_key(data.texts)
            write_atomic(path, partial(torch.save, asdict(cache)))
        return cache
    paths = catalog.set_index("id")["path"].reindex(data.image_ids)
    if paths.isna().any():
        raise ValueError(
            f"{int(paths.isna().sum())} example images are not in the catalog: rebuild the examples"
        )
    cache = build_feature_cache(
        encoder,
        trunk,
        paths,
        validation,
        data.texts,
        settings,
        limits,
        progress,
        outside_paths,
        backbone_features,
    )
    write_atomic(path, partial(torch.save, asdict(cache)))
    return cache


def _cache_key(
    encoder: Encoder,
    stages: int,
    settings: TrainingSettings,
    image_ids: list[str],
    val_paths: list[str],
    outside_paths: dict[str, list[str]],
) -> str:
    spec = encoder.spec
    parts = [
        spec.image_backbone,
        spec.image_size,
        stages,
        settings.views,
        settings.seed,
        image_ids,
        val_paths,
    ]
    digest = hashlib.blake2b(json.dumps([*parts, outside_paths], sort_keys=True).encode(), digest_size=8)
    return digest.hexdigest()


def failed_positions(cache: FeatureCache, data: IndexedExamples) -> dict[int, str]:
    position = {image_id: i for i, image_id in enumerate(data.image_ids)}
    return {position[i]: why for i, why in cache.failed.items() if i in position}
