"""One epoch of contrastive training on cached features: batches, losses and hard negatives
(validation and what is kept: selection.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imagesearch.evaluation.sets import EvalSets
from imagesearch.models.encoders import Encoder
from imagesearch.models.towers import AnchoredProjection, ResidualText
from imagesearch.settings import TrainingSettings
from imagesearch.training import losses
from imagesearch.training.examples import IndexedExamples, positive_sets
from imagesearch.training.features import FeatureCache, autocast_for
from imagesearch.training.parts import LearnedParts, equal_pairs, top_outputs, warmup_cosine
from imagesearch.training.selection import ModelSelection
from imagesearch.training.validation import ValidationSet


class Trainer:
    def __init__(
        self,
        encoder: Encoder,
        data: IndexedExamples,
        cache: FeatureCache,
        validation: ValidationSet,
        top: nn.Module,
        settings: TrainingSettings,
        outside: dict[str, EvalSets] | None = None,
    ):
        self.encoder, self.data, self.cache = encoder, data, cache
        self.settings, self.device = settings, encoder.device
        self.parts = LearnedParts(encoder, top, settings.temperature, settings.learn_temperature).to(
            self.device
        )
        self.selection = ModelSelection(
            encoder, self.parts, cache, validation, data.texts, settings, outside or {}
        )
        self.parts.top.eval()  # batch-norm statistics stay those of pretraining
        self.optimizer = torch.optim.AdamW(
            [
                *head_groups(self.parts, settings),
                {"params": list(self.parts.top.parameters()), "lr": settings.backbone_learning_rate},
            ],
            weight_decay=settings.weight_decay,
        )
        frozen_steps = math.ceil(len(data.anchor) / settings.batch_size)
        unfrozen_rows = min(len(data.anchor), settings.unfrozen_rows_per_epoch or len(data.anchor))
        unfrozen_steps = math.ceil(unfrozen_rows / settings.batch_size)
        total = max(1, frozen_steps * settings.frozen_epochs + unfrozen_steps * settings.unfrozen_epochs)
        warmup = int(settings.warmup_fraction * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, total))
        self.pooled_train: torch.Tensor | None = None
        self.positives = positive_sets(data)
        self.class_texts = self._class_texts() if settings.distillation_weight else None

    # --- state --------------------------------------------------------------------------------
    def state(self, epoch: int, history: list[dict[str, float]]) -> dict:
        return {
            "epoch": epoch,
            "parts": self.parts.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": history,
            **self.selection.state(),
        }

    def load(self, state: dict) -> None:
        self.selection.load(state)
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
            self.pooled_train = top_outputs(self.parts.top, self.cache.train.flatten(0, 1), self.device).view(
                *self.cache.train.shape[:2], -1
            )
        rng = np.random.default_rng((self.settings.seed, epoch))
        mined = self._mine_negatives() if self.settings.mined_negatives else None
        order = rng.permutation(len(self.data.anchor))
        if self.unfrozen and self.settings.unfrozen_rows_per_epoch:
            order = order[: self.settings.unfrozen_rows_per_epoch]
        totals = dict.fromkeys(["loss", "loss_image_text", "loss_image_image", "loss_distillation"], 0.0)
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

    def _image_embeddings(self, images: np.ndarray, views: np.ndarray) -> torch.Tensor:
        pooled = self.pooled_train is not None
        source = self.pooled_train if pooled else self.cache.train
        features = source[torch.from_numpy(images), torch.from_numpy(views)].to(self.device).float()
        with autocast_for(self.device):
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
            same = equal_pairs(texts) | equal_pairs(anchors[text_rows])
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
                equal_pairs(a)
                | equal_pairs(positives)
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
        parts = {name: value.detach() for name, (value, _) in terms.items()}
        if self.class_texts is not None and self.pooled_train is not None:
            features = self.pooled_train[torch.from_numpy(anchors), torch.from_numpy(view_a)]
            distillation = self._distillation(features.to(self.device).float(), anchor_emb)
            loss = loss + self.settings.distillation_weight * distillation
            parts["loss_distillation"] = distillation.detach()
        return {"loss": loss, **parts}

    def _class_texts(self) -> torch.Tensor | None:
        """The class-name prompt embeddings the bridge mixes, scaled like the pooled text features the
        text head sees (its residual has a bias, so scale matters); None without an anchored head."""
        if not isinstance(self.parts.image_projection, AnchoredProjection):
            return None
        names = self.parts.image_projection.class_embeddings.float()
        return (names * self.cache.texts.norm(dim=-1).mean()).to(self.device)

    def _distillation(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """KL from the untrained anchor's image -> class-name distribution to the trained one's
        (ZSCL-style): the residuals may learn the training corpus, but not by moving what a training
        image has in common with the ImageNet vocabulary. Measured, it does not keep the outside
        collections' text->image (README, "What generalizes"), so its weight defaults to 0."""
        scale = self.parts.scale().detach()
        with torch.no_grad():
            names = F.normalize(self.class_texts, dim=-1)
            teacher = scale * self.parts.image_projection.anchor(features) @ names.T
        student = scale * images @ self.parts.texts(self.class_texts).T
        return F.kl_div(
            student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean"
        )

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


def head_groups(parts: LearnedParts, settings: TrainingSettings) -> list[dict]:
    """The heads' optimizer groups. The anchored head's residuals start at zero, where the model is
    the pretrained anchor: `residual_weight_decay` pulls them back there at every step (decoupled
    weight decay towards the starting point, the L2-SP idea with a zero start), so they cannot grow
    past what the data keeps asking for."""
    heads = [parts.image_projection, parts.text_projection]
    params = [p for head in heads for p in head.parameters()]
    decay = settings.residual_weight_decay
    residual = [m.residual for m in heads if isinstance(m, AnchoredProjection | ResidualText)]
    held = {id(p) for module in residual for p in module.parameters()} if decay is not None else set()
    groups = [
        {
            "params": [*(p for p in params if id(p) not in held), parts.logit_scale],
            "lr": settings.learning_rate,
        }
    ]
    if held:
        kept = [p for p in params if id(p) in held]
        groups.append({"params": kept, "lr": settings.learning_rate, "weight_decay": decay})
    return groups
