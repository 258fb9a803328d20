"""Contrastive co-training of the image and text towers on the mixed training examples.

Pretrained backbones, two phases:
1. frozen: only the projection heads (and the temperature) learn. The frozen backbone's features of
   every training view are computed once (the feature cache), so an epoch costs seconds on a CPU.
2. unfrozen: the last `unfreeze_stages` backbone stages learn too (lower learning rate). The cache then
   holds the activations entering those stages, so the frozen part still runs only once.
The text transformer stays frozen; its pooled outputs are cached and its projection head learns.

Losses: symmetric InfoNCE image<->text and image<->image (or triplet), learnable temperature, in-batch
negatives plus hard negatives (known ones from judgments/clicks, mined ones: each anchor's nearest
non-positive image). AdamW, linear warm-up then cosine decay, deterministic seeds. A checkpoint after
every epoch lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from imagesearch import losses
from imagesearch.augment import ImageViews
from imagesearch.backfill import collate, default_workers
from imagesearch.encoders import Encoder
from imagesearch.images import DecodeLimits
from imagesearch.metrics import recall_at_k
from imagesearch.settings import TrainingSettings
from imagesearch.training_data import tag_text

CHECKPOINT = "checkpoint.pt"
CACHE = "features.pt"
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(slots=True)
class IndexedExamples:
    """The examples table as integer arrays into `image_ids` and `texts` (-1 = absent)."""

    image_ids: list[str]
    texts: list[str]
    anchor: np.ndarray
    positive_image: np.ndarray
    positive_text: np.ndarray
    negative: np.ndarray
    weight: np.ndarray


def index_examples(examples: pd.DataFrame, extra_texts: list[str] = ()) -> IndexedExamples:
    ids = pd.concat([examples[c].dropna() for c in ("anchor_id", "positive_id", "negative_id")]).unique()
    image_ids = sorted(map(str, ids))
    texts = sorted(set(map(str, examples["positive_text"].dropna())) | set(extra_texts))
    image_index = {image_id: i for i, image_id in enumerate(image_ids)}
    text_index = {text: i for i, text in enumerate(texts)}

    def lookup(column: str, table: dict[str, int]) -> np.ndarray:
        return np.array([table[str(v)] if pd.notna(v) else -1 for v in examples[column]], dtype=np.int64)

    return IndexedExamples(
        image_ids,
        texts,
        lookup("anchor_id", image_index),
        lookup("positive_id", image_index),
        lookup("positive_text", text_index),
        lookup("negative_id", image_index),
        examples["weight"].astype(float).to_numpy(np.float32),
    )


@dataclass(slots=True)
class ValidationSet:
    """Val-split images (clean view) with text queries (their tags) and image queries (same category)."""

    image_ids: list[str]
    paths: list[str]
    categories: list[str]
    query_texts: list[str]
    text_relevant: list[set[str]]

    @classmethod
    def from_catalog(cls, catalog: pd.DataFrame, min_images: int = 2) -> ValidationSet:
        val = catalog[catalog["split"] == "val"].sort_values("id")
        exploded = val[["id", "tags"]].explode("tags").dropna(subset=["tags"])
        groups = exploded.groupby(exploded["tags"].astype(str))["id"].apply(set)
        groups = groups[groups.map(len) >= min_images]
        return cls(
            val["id"].tolist(),
            val["path"].tolist(),
            val["category"].astype(str).tolist(),
            [tag_text(tag) for tag in groups.index],
            groups.tolist(),
        )


@dataclass(slots=True)
class TrainResult:
    history: list[dict[str, float]]
    seconds: float
    cache_seconds: float
    resumed_from_epoch: int
    images: int
    rows: int
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def fingerprint(settings: TrainingSettings, model: dict, examples_path: Path) -> str:
    """Identifies a training run's inputs: the same fingerprint may resume the same checkpoint."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps([settings.model_dump(mode="json"), model], sort_keys=True).encode())
    digest.update(examples_path.read_bytes())
    return digest.hexdigest()


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


def build_feature_cache(
    encoder: Encoder,
    trunk: nn.Module,
    train_images: pd.Series,
    validation: ValidationSet,
    texts: list[str],
    settings: TrainingSettings,
    limits: DecodeLimits,
    progress: bool,
) -> FeatureCache:
    """`train_images` maps image id -> path, in the order of the cache's rows."""

    def views_of(paths: list[str], ids: list[str], views: int, augment: bool) -> ImageViews:
        return ImageViews(
            paths, ids, encoder.preprocessor, limits, views=views, augment=augment, seed=settings.seed
        )

    train, failed = _trunk_features(
        encoder,
        trunk,
        views_of(train_images.tolist(), train_images.index.tolist(), settings.views, True),
        progress,
    )
    val, failed_val = _trunk_features(
        encoder, trunk, views_of(validation.paths, validation.image_ids, 1, False), progress
    )
    with torch.inference_mode():
        pooled = [
            encoder.text_model.pooled(**encoder.tokenize(texts[i : i + 256])).float().cpu()
            for i in range(0, len(texts), 256)
        ]
    text_features = torch.cat(pooled) if pooled else torch.zeros(0, 1)
    return FeatureCache(train, val[:, 0], text_features, {**failed, **failed_val})


def _trunk_features(
    encoder: Encoder, trunk: nn.Module, dataset: ImageViews, progress: bool
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
    bar = tqdm(total=total, desc="caching features", unit="view", disable=not progress, mininterval=2)
    with torch.inference_mode(), _autocast(encoder.device):
        for positions, pixels, bad in loader:
            failed.update({dataset.ids[p]: reason for p, reason in bad})
            if pixels is None:
                continue
            flat = pixels.flatten(0, 1).to(encoder.device, memory_format=torch.channels_last)
            features = trunk(flat).float().cpu().to(torch.float16)
            features = features.view(len(positions), views, *features.shape[1:])
            if out is None:
                out = torch.zeros(len(dataset), views, *features.shape[2:], dtype=torch.float16)
            out[positions] = features
            bar.update(len(positions) * views)
    bar.close()
    if out is None:
        raise ValueError("no training image could be decoded")
    return out, failed


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class _Parts(nn.Module):
    """What learns: the image top (in phase 2), both projection heads and the temperature."""

    def __init__(self, encoder: Encoder, top: nn.Module, temperature: float, learn_temperature: bool):
        super().__init__()
        self.top = top
        self.image_projection = encoder.image_model.projection
        self.text_projection = encoder.text_model.projection
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1 / temperature)), requires_grad=learn_temperature
        )

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def images(self, features: torch.Tensor, *, pooled: bool) -> torch.Tensor:
        return F.normalize(self.image_projection(features if pooled else self.top(features)), dim=-1)

    def texts(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(pooled), dim=-1)


class _Trainer:
    def __init__(
        self,
        encoder: Encoder,
        data: IndexedExamples,
        cache: FeatureCache,
        validation: ValidationSet,
        top: nn.Module,
        settings: TrainingSettings,
    ):
        self.encoder, self.data, self.cache, self.validation = encoder, data, cache, validation
        self.settings, self.device = settings, encoder.device
        self.parts = _Parts(encoder, top, settings.temperature, settings.learn_temperature).to(self.device)
        self.parts.top.eval()  # batch-norm statistics stay those of pretraining
        head_params = [*self.parts.image_projection.parameters(), *self.parts.text_projection.parameters()]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [*head_params, self.parts.logit_scale], "lr": settings.learning_rate},
                {"params": list(self.parts.top.parameters()), "lr": settings.backbone_learning_rate},
            ],
            weight_decay=settings.weight_decay,
        )
        frozen_steps = math.ceil(len(data.anchor) / settings.batch_size)
        unfrozen_rows = min(len(data.anchor), settings.unfrozen_rows_per_epoch or len(data.anchor))
        unfrozen_steps = math.ceil(unfrozen_rows / settings.batch_size)
        total = max(1, frozen_steps * settings.frozen_epochs + unfrozen_steps * settings.unfrozen_epochs)
        warmup = int(settings.warmup_fraction * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(warmup, total))
        self.pooled_train: torch.Tensor | None = None
        self.positives = _positive_sets(data)

    # --- state --------------------------------------------------------------------------------
    def state(self, epoch: int, history: list[dict[str, float]]) -> dict:
        return {
            "epoch": epoch,
            "parts": self.parts.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": history,
        }

    def load(self, state: dict) -> None:
        self.parts.load_state_dict(state["parts"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # --- one epoch ----------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> dict[str, float]:
        self.unfrozen = epoch >= self.settings.frozen_epochs
        self.parts.top.requires_grad_(self.unfrozen)
        if self.unfrozen:
            self.pooled_train = None  # the top is learning: its outputs go stale
        elif self.pooled_train is None:
            self.pooled_train = self._top_outputs(self.cache.train.flatten(0, 1)).view(
                *self.cache.train.shape[:2], -1
            )
        rng = np.random.default_rng((self.settings.seed, epoch))
        mined = self._mine_negatives() if self.settings.mined_negatives else None
        order = rng.permutation(len(self.data.anchor))
        if self.unfrozen and self.settings.unfrozen_rows_per_epoch:
            order = order[: self.settings.unfrozen_rows_per_epoch]
        totals = {"loss": 0.0, "loss_image_text": 0.0, "loss_image_image": 0.0}
        for start in range(0, len(order), self.settings.batch_size):
            rows = order[start : start + self.settings.batch_size]
            parts = self._batch_loss(rows, rng, mined)
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            self.optimizer.step()
            self.scheduler.step()
            for key, value in parts.items():
                totals[key] += float(value.detach()) * len(rows) / len(order)
        return {**totals, "temperature": 1 / self.parts.scale().item()}

    def _top_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Top outputs (backbone features) of cached trunk features, without gradients, on the CPU."""
        with torch.inference_mode(), _autocast(self.device):
            return torch.cat(
                [
                    self.parts.top(features[i : i + 256].to(self.device).float()).float().cpu()
                    for i in range(0, len(features), 256)
                ]
            )

    def _image_embeddings(self, images: np.ndarray, views: np.ndarray) -> torch.Tensor:
        pooled = self.pooled_train is not None
        source = self.pooled_train if pooled else self.cache.train
        features = source[torch.from_numpy(images), torch.from_numpy(views)].to(self.device).float()
        with _autocast(self.device):
            return self.parts.images(features, pooled=pooled).float()

    def _batch_loss(
        self, rows: np.ndarray, rng: np.random.Generator, mined: np.ndarray | None
    ) -> dict[str, torch.Tensor]:
        data, views = self.data, self.settings.views
        anchors = data.anchor[rows]
        view_a = rng.integers(views, size=len(rows))
        # two views of one image (augmentation rows) must differ when there is more than one
        view_b = (view_a + rng.integers(1, views, size=len(rows))) % views if views > 1 else view_a
        negatives = data.negative[rows]
        if mined is not None:
            negatives = np.where(negatives >= 0, negatives, mined[anchors])
        anchor_emb = self._image_embeddings(anchors, view_a)
        weights = torch.from_numpy(data.weight[rows]).to(self.device)
        text_rows = data.positive_text[rows] >= 0
        terms: dict[str, tuple[torch.Tensor, int]] = {}
        if text_rows.any():
            texts = data.positive_text[rows][text_rows]
            text_emb = self.parts.texts(self.cache.texts[torch.from_numpy(texts)].to(self.device))
            same = _equal(texts) | _equal(anchors[text_rows])
            terms["loss_image_text"] = (
                self._loss(
                    text_emb,
                    anchor_emb[text_rows],
                    anchors[text_rows],
                    negatives[text_rows],
                    same,
                    weights[text_rows],
                    rng,
                ),
                int(text_rows.sum()),
            )
        image_rows = ~text_rows
        if image_rows.any() and self.settings.image_image_weight > 0:
            positives = data.positive_image[rows][image_rows]
            positive_emb = self._image_embeddings(positives, view_b[image_rows])
            a = anchors[image_rows]
            same = (
                _equal(a)
                | _equal(positives)
                | (a[:, None] == positives[None, :])
                | (positives[:, None] == a[None, :])
            )
            terms["loss_image_image"] = (
                self._loss(
                    anchor_emb[image_rows],
                    positive_emb,
                    a,
                    negatives[image_rows],
                    same,
                    weights[image_rows],
                    rng,
                ),
                int(image_rows.sum()),
            )
        mix = {"loss_image_text": 1.0, "loss_image_image": self.settings.image_image_weight}
        weight_total = sum(mix[name] * count for name, (_, count) in terms.items())
        if not terms:  # a batch of image-image rows while that term is switched off
            return {"loss": anchor_emb.sum() * 0.0}
        loss = sum(mix[name] * count * value for name, (value, count) in terms.items()) / weight_total
        return {"loss": loss, **{name: value.detach() for name, (value, _) in terms.items()}}

    def _loss(
        self,
        queries: torch.Tensor,
        candidates: torch.Tensor,
        anchors: np.ndarray,
        negatives: np.ndarray,
        same: np.ndarray,
        weights: torch.Tensor,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """`candidates[i]` is the positive of `queries[i]`; `anchors[i]` the image id of the row."""
        chosen = negatives[negatives >= 0]
        extra = excluded = None
        if len(chosen):
            extra = self._image_embeddings(chosen, rng.integers(self.settings.views, size=len(chosen)))
            # a negative that is a row's own anchor image must not be pushed away from that row
            excluded = torch.from_numpy(anchors[:, None] == chosen[None, :]).to(self.device)
        same_mask = torch.from_numpy(same & ~np.eye(len(same), dtype=bool)).to(self.device)
        common = {"extra_negatives": extra, "extra_excluded": excluded, "same": same_mask, "weights": weights}
        if self.settings.loss == "triplet":
            return losses.triplet(queries, candidates, margin=self.settings.triplet_margin, **common)
        return losses.info_nce(queries, candidates, self.parts.scale(), **common)

    # --- hard negatives and validation ----------------------------------------------------------
    def _mine_negatives(self, candidates: int = 16) -> np.ndarray:
        """Each image's nearest training image (view 0) that no example makes its positive; -1 if none."""
        embeddings = self.embed_train_images()
        mined = np.full(len(embeddings), -1, dtype=np.int64)
        for start in range(0, len(embeddings), 1024):
            similarity = embeddings[start : start + 1024] @ embeddings.T
            nearest = torch.topk(similarity, min(candidates, len(embeddings)), dim=1).indices.numpy()
            for offset, row in enumerate(nearest):
                image = start + offset
                excluded = self.positives[image]
                mined[image] = next((int(c) for c in row if c != image and c not in excluded), -1)
        return mined

    @torch.inference_mode()
    def embed_train_images(self) -> torch.Tensor:
        """Unit embeddings of every training image's first view."""
        images = np.arange(len(self.data.image_ids))
        first = np.zeros(len(images), dtype=np.int64)
        return torch.cat(
            [
                self._image_embeddings(images[i : i + 512], first[i : i + 512]).cpu()
                for i in range(0, len(images), 512)
            ]
        )

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """recall@10 on the val split: tag text -> image, and image -> image of the same category."""
        val = self.validation
        if not val.image_ids:
            return {}
        images = F.normalize(
            self.parts.image_projection(self._top_outputs(self.cache.val).to(self.device)), dim=-1
        )
        images = images.float().cpu()
        metrics = {}
        if val.query_texts:
            positions = [self.data.texts.index(text) for text in val.query_texts]
            texts = self.parts.texts(self.cache.texts[positions].to(self.device)).float().cpu()
            ranked = _ranked_ids(texts @ images.T, val.image_ids, exclude_self=False)
            metrics["val_text_to_image_recall_at_10"] = recall_at_k(ranked, val.text_relevant, 10)
        ranked = _ranked_ids(images @ images.T, val.image_ids, exclude_self=True)
        category = np.array(val.categories)
        relevant = [
            {val.image_ids[j] for j in np.flatnonzero(category == c) if j != i}
            for i, c in enumerate(category)
        ]
        metrics["val_image_to_image_recall_at_10"] = recall_at_k(ranked, relevant, 10)
        return metrics


def _ranked_ids(
    similarity: torch.Tensor, ids: list[str], *, exclude_self: bool, k: int = 10
) -> list[list[str]]:
    if exclude_self:
        similarity = similarity.clone().fill_diagonal_(-float("inf"))
    top = torch.topk(similarity, min(k, similarity.shape[1]), dim=1).indices.numpy()
    return [[ids[j] for j in row] for row in top]


def _equal(values: np.ndarray) -> np.ndarray:
    return values[:, None] == values[None, :]


def _positive_sets(data: IndexedExamples) -> list[set[int]]:
    """For each image: every image some example pairs it with, directly or through a shared text."""
    positives: list[set[int]] = [set() for _ in data.image_ids]
    by_text: dict[int, list[int]] = {}
    for anchor, image, text in zip(data.anchor, data.positive_image, data.positive_text, strict=True):
        if image >= 0:
            positives[anchor].add(int(image))
            positives[image].add(int(anchor))
        if text >= 0:
            by_text.setdefault(int(text), []).append(int(anchor))
    for members in by_text.values():
        if len(members) > 1000:  # a text on that many images says little; do not let it hide negatives
            continue
        for member in members:
            positives[member].update(members)
    return positives


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_towers(
    encoder: Encoder,
    examples: pd.DataFrame,
    catalog: pd.DataFrame,
    settings: TrainingSettings,
    *,
    work_dir: Path,
    limits: DecodeLimits,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `encoder` (a fresh two-tower encoder) in place; resumes from `work_dir` when it can.

    `work_dir` is specific to one set of inputs (see `fingerprint`): its feature cache and checkpoint
    are reused by a re-run after an interruption.
    """
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    examples = subsample_examples(examples, settings.max_train_images, settings.seed)
    validation = ValidationSet.from_catalog(catalog)
    data = index_examples(examples, validation.query_texts)
    if not len(data.anchor):
        raise ValueError("no training examples: enable at least one source with data")
    stages = settings.unfreeze_stages if settings.unfrozen_epochs else 0
    trunk, top = split_backbone(encoder.image_model.backbone, stages)
    cache_seconds = time.perf_counter()
    cache = _load_or_build_cache(
        encoder, trunk, data, catalog, validation, settings, limits, work_dir, progress
    )
    cache_seconds = time.perf_counter() - cache_seconds
    failed = _failed_positions(cache, data)
    data = _without_images(data, set(failed))
    trainer = _Trainer(encoder, data, cache, validation, top, settings)
    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint = work_dir / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        trainer.load(state)
        history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
    if start_epoch == 0:
        history.append({"epoch": 0, **trainer.validate()})  # untrained heads: the floor to beat
    for epoch in range(max(start_epoch, 1), settings.frozen_epochs + settings.unfrozen_epochs + 1):
        metrics = {"epoch": epoch, **trainer.run_epoch(epoch - 1), **trainer.validate()}
        history.append(metrics)
        _save_atomic(trainer.state(epoch, history), checkpoint)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    return TrainResult(
        history,
        time.perf_counter() - started,
        cache_seconds,
        start_epoch,
        len(data.image_ids),
        len(data.anchor),
        dict(cache.failed),
    )


def subsample_examples(examples: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """The rows whose images all lie in a random `max_images` of the anchors (only those get cached
    features). A hard negative outside that set is dropped, not its row: the pair is still a positive."""
    if max_images is None:
        return examples
    anchors = sorted(examples["anchor_id"].dropna().unique())
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(anchors, size=min(max_images, len(anchors)), replace=False))
    inside = [examples[c].isna() | examples[c].isin(keep) for c in ("anchor_id", "positive_id")]
    kept = examples[inside[0] & inside[1]].reset_index(drop=True)
    return kept.assign(negative_id=kept["negative_id"].where(kept["negative_id"].isin(keep)))


def _load_or_build_cache(
    encoder: Encoder,
    trunk: nn.Module,
    data: IndexedExamples,
    catalog: pd.DataFrame,
    validation: ValidationSet,
    settings: TrainingSettings,
    limits: DecodeLimits,
    work_dir: Path,
    progress: bool,
) -> FeatureCache:
    path = work_dir / CACHE
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureCache(saved["train"], saved["val"], saved["texts"], dict(saved["failed"]))
    paths = catalog.set_index("id")["path"].reindex(data.image_ids)
    if paths.isna().any():
        raise ValueError(
            f"{int(paths.isna().sum())} example images are not in the catalog: rebuild the examples"
        )
    cache = build_feature_cache(encoder, trunk, paths, validation, data.texts, settings, limits, progress)
    _save_atomic(asdict(cache), path)
    return cache


def _failed_positions(cache: FeatureCache, data: IndexedExamples) -> dict[int, str]:
    position = {image_id: i for i, image_id in enumerate(data.image_ids)}
    return {position[i]: why for i, why in cache.failed.items() if i in position}


def _without_images(data: IndexedExamples, images: set[int]) -> IndexedExamples:
    """Drop the rows that use an image whose views could not be computed (zeros in the cache)."""
    if not images:
        return data
    bad = np.array(sorted(images))
    keep = ~(np.isin(data.anchor, bad) | np.isin(data.positive_image, bad) | np.isin(data.negative, bad))
    return IndexedExamples(
        data.image_ids,
        data.texts,
        data.anchor[keep],
        data.positive_image[keep],
        data.positive_text[keep],
        data.negative[keep],
        data.weight[keep],
    )


def _save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, staging)
    os.replace(staging, path)
