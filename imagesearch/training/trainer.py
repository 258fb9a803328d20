"""One epoch of contrastive training on cached features: batches, losses, hard negatives, validation."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imagesearch.evaluation.metrics import recall_at_k
from imagesearch.evaluation.ranking import rank_corpus, score_rankings
from imagesearch.evaluation.sets import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, EvalSets
from imagesearch.models.encoders import Encoder
from imagesearch.models.towers import AnchoredProjection, ImageTower, rooted, set_interpolation
from imagesearch.settings import TrainingSettings
from imagesearch.training import losses
from imagesearch.training.examples import IndexedExamples, positive_sets
from imagesearch.training.features import FeatureCache, autocast_for
from imagesearch.training.parts import LearnedParts, equal_pairs, ranked_ids, warmup_cosine
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
        self.encoder, self.data, self.cache, self.validation = encoder, data, cache, validation
        self.outside = outside or {}
        self.best: dict | None = None  # the selected epoch: its metrics, interpolation and parts
        self.reference: dict[str, float] | None = None  # epoch 0's val metrics
        self.bridge: dict[str, float] | None = None  # anchored: the class-name bridge chosen at epoch 0
        self.settings, self.device = settings, encoder.device
        self.parts = LearnedParts(encoder, top, settings.temperature, settings.learn_temperature).to(
            self.device
        )
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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, total))
        self.pooled_train: torch.Tensor | None = None
        self.positives = positive_sets(data)

    # --- state --------------------------------------------------------------------------------
    def state(self, epoch: int, history: list[dict[str, float]]) -> dict:
        return {
            "epoch": epoch,
            "parts": self.parts.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": history,
            "best": self.best,
            "reference": self.reference,
            "bridge": self.bridge,
        }

    def load(self, state: dict) -> None:
        self.best, self.reference = state.get("best"), state.get("reference")
        if state.get("bridge"):
            self._set_bridge(state["bridge"])
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
        with torch.inference_mode(), autocast_for(self.device):
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
        """recall@10 on the val split (tag text -> image, image -> image of the same category) and
        nDCG@10 on each out-of-domain collection's val rows; image vectors as served (with raw features)."""
        metrics = {}
        val = self.validation
        if val.image_ids:
            images = self._served_vectors(self.cache.val)
            if val.query_texts:
                texts = self._text_vectors(val.query_texts, images.shape[1])
                ranked = ranked_ids(texts @ images.T, val.image_ids, exclude_self=False)
                metrics["val_text_to_image_recall_at_10"] = recall_at_k(ranked, val.text_relevant, 10)
            ranked = ranked_ids(images @ images.T, val.image_ids, exclude_self=True)
            category = np.array(val.categories)
            relevant = [
                {val.image_ids[j] for j in np.flatnonzero(category == c) if j != i}
                for i, c in enumerate(category)
            ]
            metrics["val_image_to_image_recall_at_10"] = recall_at_k(ranked, relevant, 10)
        for name, sets in self.outside.items():
            vectors = self._served_vectors(self.cache.outside[name])
            embed = partial(self._text_numpy, width=vectors.shape[1])
            scores = score_rankings(sets, rank_corpus(sets, vectors.numpy(), embed))
            for kind in (IMAGE_TO_IMAGE, TEXT_TO_IMAGE):
                found = scores.get(kind, {})
                metrics[f"val_{name}_{kind}_ndcg_at_10"] = found.get("ndcg_at_10", 0.0)
        return metrics

    def _served_vectors(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self._top_outputs(features).to(self.device)
        return self.encoder.image_model.from_features(pooled).float().cpu()

    def _text_numpy(self, texts: list[str], width: int) -> np.ndarray:
        return self._text_vectors(texts, width).numpy()

    def _text_vectors(self, texts: list[str], width: int) -> torch.Tensor:
        positions = [self.data.texts.index(text) for text in texts]
        shared = self.parts.texts(self.cache.texts[positions].to(self.device)).float().cpu()
        return F.pad(shared, (0, width - shared.shape[1]))

    # --- model selection -------------------------------------------------------------------------
    def _anchored(self) -> bool:
        return isinstance(self.parts.image_projection, AnchoredProjection)

    @torch.inference_mode()
    def _raw_feature_metrics(self) -> dict[str, float]:
        """Out-of-domain image->image val nDCG of the raw pretrained features: what "more like this"
        must not fall below (text->image is held to the untrained model, v0 for the anchored head)."""
        metrics = {}
        for name, sets in self.outside.items():
            raw = F.normalize(self._top_outputs(self.cache.outside[name]).float(), dim=-1).numpy()
            scores = score_rankings(sets, rank_corpus(sets, raw, None))
            metrics[f"val_{name}_{IMAGE_TO_IMAGE}_ndcg_at_10"] = scores[IMAGE_TO_IMAGE]["ndcg_at_10"]
        return metrics

    def _score(self, metrics: dict[str, float]) -> float:
        inside = [metrics[k] for k in IN_DOMAIN_VAL if k in metrics]
        score = float(np.mean(inside)) if inside else 0.0
        tolerance = self.settings.selection_ood_tolerance
        for key, value in metrics.items():
            if key.startswith("val_") and key not in IN_DOMAIN_VAL and key in (self.reference or {}):
                score -= OOD_PENALTY * max(0.0, self.reference[key] - tolerance - value)
        return score

    def _interpolate(self, weight: float) -> None:
        set_interpolation(self.encoder.image_model, weight)
        set_interpolation(self.encoder.text_model, weight)

    def _candidates(self, key: str, grid: list[float], apply) -> list[dict[str, float]]:
        out = []
        for value in grid:
            apply(value)
            metrics = self.validate()
            out.append({**metrics, key: value, "selection_score": self._score(metrics)})
        return out

    def choose_bridge(self) -> dict[str, float]:
        """Anchored head, before training: the class-name bridge's top-k and softmax temperature with
        the best mean over every val metric, in-domain and out of domain (v0 keeps its own, 10 and 1).
        A softer mix of more classes describes pictures unlike ImageNet's photos better; the residual
        then learns on top of the anchor chosen here, and selection holds it to that anchor."""
        spec = self.encoder.spec
        top_ks = self.settings.bridge_top_k_grid or [spec.zeroshot_top_k]
        temperatures = self.settings.bridge_temperature_grid or [spec.bridge_temperature]
        candidates = []
        for top_k in top_ks:
            for temperature in temperatures:
                bridge = {"bridge_top_k": top_k, "bridge_temperature": temperature}
                self._set_bridge(bridge)
                metrics = self.validate()
                candidates.append({**bridge, "score": float(np.mean(list(metrics.values())))})
        best = max(candidates, key=lambda c: c["score"])
        self._set_bridge(best)
        return {key: best[key] for key in ("bridge_top_k", "bridge_temperature")}

    def _set_bridge(self, bridge: dict[str, float]) -> None:
        projection = self.parts.image_projection
        projection.top_k, projection.temperature = int(bridge["bridge_top_k"]), bridge["bridge_temperature"]
        self.bridge = {"bridge_top_k": projection.top_k, "bridge_temperature": projection.temperature}
        self.encoder.spec = replace(
            self.encoder.spec, zeroshot_top_k=projection.top_k, bridge_temperature=projection.temperature
        )

    def validate_and_select(self, epoch: int) -> dict[str, float]:
        """Validate (at each interpolation of the grid, for the anchored head) and remember the best.

        The selection score mirrors the promotion gate: the mean in-domain val metric, minus a steep
        penalty for every out-of-domain val metric below its reference by more than
        `selection_ood_tolerance` - text->image: the untrained model (v0 for the anchored head);
        image->image: the raw pretrained features. An epoch that wins in-domain by
        forgetting elsewhere is not the one kept.
        """
        if self._anchored() and epoch:
            candidates = self._candidates(
                "interpolation", self.settings.interpolation_grid, self._interpolate
            )
            self._interpolate(1.0)  # training always moves the full residuals
        else:
            bridge = self.choose_bridge() if self._anchored() else {}
            metrics = self.validate()
            self.reference = self.reference or (metrics | self._raw_feature_metrics())
            candidates = [
                {**metrics, **bridge, "interpolation": 1.0, "selection_score": self._score(metrics)}
            ]
        chosen = max(candidates, key=lambda c: c["selection_score"])
        if self.best is None or chosen["selection_score"] > self.best["metrics"]["selection_score"]:
            state = {k: v.detach().clone() for k, v in self.parts.state_dict().items()}
            self.best = {"epoch": epoch, "metrics": chosen, "parts": state}
        return chosen

    def restore_best(self) -> dict[str, float]:
        """Load the selected epoch's heads and interpolation, then choose the raw-feature weight (it
        only moves image->image scores) on validation too; the metrics of the model as kept."""
        if self.best is None:
            return {}
        self.parts.load_state_dict(self.best["parts"])
        self._interpolate(self.best["metrics"]["interpolation"])
        chosen = self.best["metrics"]
        tower = self.encoder.image_model
        if getattr(tower, "raw_feature_weight", 0) and self.settings.raw_transform_grid:
            chosen = {**chosen, "raw_transform": self._choose_raw_transform(tower)}
        if getattr(tower, "raw_feature_weight", 0) and self.settings.raw_weight_grid:

            def apply(weight: float) -> None:
                tower.raw_feature_weight = weight

            candidates = self._candidates("raw_feature_weight", self.settings.raw_weight_grid, apply)
            chosen = {**chosen, **max(candidates, key=lambda c: c["selection_score"])}
            apply(chosen["raw_feature_weight"])
            self.encoder.spec = replace(self.encoder.spec, raw_feature_weight=chosen["raw_feature_weight"])
        return {"epoch": self.best["epoch"], **(self.bridge or {}), **chosen}

    def _choose_raw_transform(self, tower: ImageTower) -> str:
        """How the raw block is made (`ImageTower`): the kind with the best mean over every val metric,
        in-domain and out of domain, as the bridge is chosen (it moves image->image scores only)."""
        mean = self._train_raw_mean()
        scores = {}
        for kind in self.settings.raw_transform_grid:
            tower.use_raw_transform(kind, mean)
            scores[kind] = float(np.mean(list(self.validate().values())))
        best = max(scores, key=scores.get)
        tower.use_raw_transform(best, mean)
        self.encoder.spec = replace(self.encoder.spec, raw_transform=best)
        return best

    def _train_raw_mean(self) -> torch.Tensor:
        """The mean rooted feature vector of the training views (undecodable images' zero rows left out)."""
        pooled = self.pooled_train
        if pooled is None:
            pooled = self._top_outputs(self.cache.train.flatten(0, 1))
        rows = pooled.reshape(-1, pooled.shape[-1]).float()
        rows = rows[rows.abs().sum(dim=-1) > 0]
        return rooted(rows).mean(dim=0).to(self.device)


IN_DOMAIN_VAL = ("val_text_to_image_recall_at_10", "val_image_to_image_recall_at_10")
OOD_PENALTY = 10.0
