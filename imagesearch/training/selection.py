"""Model selection on validation: the val metrics of the model as it stands, and every choice made
on them - the class-name bridge before training, the epoch and interpolation after each epoch, the raw
block's transform and weight at the end. The score mirrors the promotion gate (`validate_and_select`)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import torch
from torch.nn import functional as F

from imagesearch.evaluation.metrics import recall_at_k
from imagesearch.evaluation.ranking import rank_corpus, score_rankings
from imagesearch.evaluation.sets import IMAGE_TO_IMAGE, TEXT_TO_IMAGE, EvalSets
from imagesearch.models.encoders import Encoder
from imagesearch.models.routing import route_collection
from imagesearch.models.towers import (
    GATE_OPEN,
    PLAIN,
    AnchoredProjection,
    CollectionRouter,
    ImageTower,
    SpecialistImage,
    rooted,
    set_interpolation,
    set_specialist_weight,
)
from imagesearch.settings import TrainingSettings
from imagesearch.training.features import FeatureCache
from imagesearch.training.parts import LearnedParts, ranked_ids, top_outputs
from imagesearch.training.validation import ValidationSet

IN_DOMAIN_VAL = (
    "val_text_to_image_recall_at_10",
    "val_title_to_image_recall_at_10",
    "val_image_to_image_recall_at_10",
)
OOD_PENALTY = 10.0
# bumped when a rule of selection changes: a checkpoint holds choices the old rules made (see `fingerprint`)
RULES_VERSION = 2


def bridge_score(metrics: dict[str, float], *, routed: bool) -> float:
    """What the bridge is chosen on: the mean of every val metric, in-domain and out of domain. A model
    routed per collection serves its anchored columns, and so the bridge, only to collections outside
    (in domain the trained block ranks): the outside collections' metrics alone choose it there."""
    outside = {key: value for key, value in metrics.items() if key not in IN_DOMAIN_VAL}
    chosen_on = outside if routed and outside else metrics
    return float(np.mean(list(chosen_on.values()))) if chosen_on else 0.0


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in scores.items()}


class ModelSelection:
    """What training keeps: validated on the val split and each outside collection's val rows."""

    def __init__(
        self,
        encoder: Encoder,
        parts: LearnedParts,
        cache: FeatureCache,
        validation: ValidationSet,
        texts: list[str],
        settings: TrainingSettings,
        outside: dict[str, EvalSets],
    ):
        self.encoder, self.parts, self.cache, self.validation = encoder, parts, cache, validation
        # each text's row in the cache (the val queries among them)
        self.text_rows = {text: row for row, text in enumerate(texts)}
        self.settings, self.outside, self.device = settings, outside, encoder.device
        self.best: dict | None = None  # the selected epoch: its metrics, interpolation and parts
        self.reference: dict[str, float] | None = None  # epoch 0's val metrics
        self.bridge: dict[str, float] | None = None  # anchored: the class-name bridge chosen at epoch 0
        self.gate_thresholds: dict[float, float] = {}  # specialist: gate quantile -> its threshold
        self.choice_scores: dict[str, dict[str, float]] = {}  # bridge, raw block: each candidate's val score

    def state(self) -> dict:
        return {
            "best": self.best,
            "reference": self.reference,
            "bridge": self.bridge,
            "gate_thresholds": self.gate_thresholds,
            "choice_scores": self.choice_scores,
        }

    def load(self, state: dict) -> None:
        self.best, self.reference = state.get("best"), state.get("reference")
        self.gate_thresholds = state.get("gate_thresholds") or {}
        self.choice_scores = state.get("choice_scores") or {}
        if state.get("bridge"):
            self._set_bridge(state["bridge"])
        if self.router() is not None:  # it lives outside the checkpointed parts: fitted again, alike
            self.fit_gate()

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """recall@10 on the val split (tag text -> image, title -> its image, image -> image of the same
        category) and nDCG@10 on each out-of-domain collection's val rows; image vectors as served (with
        raw features)."""
        metrics = {}
        val = self.validation
        if val.image_ids:
            images = self._served_vectors(self.cache.val)
            for name, texts, relevant in (
                ("text", val.query_texts, val.text_relevant),
                ("title", val.title_texts, val.title_relevant),
            ):
                if texts:
                    similarity = self._text_vectors(texts, images.shape[1]) @ images.T
                    ranked = ranked_ids(similarity, val.image_ids, exclude_self=False)
                    metrics[f"val_{name}_to_image_recall_at_10"] = recall_at_k(ranked, relevant, 10)
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
        """One collection's image vectors as its index would hold them (routed, when the block is)."""
        pooled = top_outputs(self.parts.top, features, self.device).to(self.device)
        vectors = self.encoder.image_model.from_features(pooled).float().cpu()
        return torch.from_numpy(route_collection(self.encoder, vectors.numpy())[0])

    def _text_numpy(self, texts: list[str], width: int) -> np.ndarray:
        return self._text_vectors(texts, width).numpy()

    def _text_vectors(self, texts: list[str], width: int) -> torch.Tensor:
        positions = [self.text_rows[text] for text in texts]
        shared = self.parts.texts(self.cache.texts[positions].to(self.device)).float().cpu()
        return F.pad(shared, (0, width - shared.shape[1]))

    def anchored(self) -> bool:
        return isinstance(self.parts.image_projection, AnchoredProjection)

    def specialist(self) -> SpecialistImage | None:
        return getattr(self.parts.image_projection, "specialist", None)

    def router(self) -> CollectionRouter | None:
        return getattr(self.encoder.image_model, "router", None)

    @torch.inference_mode()
    def _raw_feature_metrics(self) -> dict[str, float]:
        """Out-of-domain image->image val nDCG of the raw pretrained features: what "more like this"
        must not fall below (text->image is held to the untrained model, v0 for the anchored head)."""
        metrics = {}
        for name, sets in self.outside.items():
            features = top_outputs(self.parts.top, self.cache.outside[name], self.device)
            raw = F.normalize(features.float(), dim=-1).numpy()
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

    def _weigh_specialist(self, weight: float) -> None:
        set_specialist_weight(self.encoder.image_model, weight)
        set_specialist_weight(self.encoder.text_model, weight)

    def _residual_candidates(self) -> list[dict[str, float]]:
        """Every interpolation of the grid; with a specialist block, with each of its weights at each
        gate threshold."""
        out = []
        for interpolation in self.settings.interpolation_grid:
            self._interpolate(interpolation)
            for block in self._specialist_settings():
                self._set_specialist(block)
                metrics = self.validate()
                chosen = {"interpolation": interpolation, **block}
                out.append({**metrics, **chosen, "selection_score": self._score(metrics)})
        return out

    def _specialist_settings(self) -> list[dict[str, float]]:
        if self.specialist() is None:
            return [{}]
        return [
            {"specialist_weight": weight, "gate_quantile": quantile}
            for weight in self.settings.specialist_weight_grid
            for quantile in self.gate_thresholds
        ]

    def _set_specialist(self, block: dict[str, float]) -> None:
        if block:
            self._weigh_specialist(block["specialist_weight"])
            gate = self.router() or self.specialist().gate  # routed per collection, every image is open
            gate.threshold.fill_(self.gate_thresholds[block["gate_quantile"]])

    @torch.inference_mode()
    def fit_gate(self) -> None:
        """The specialist's domain gate (or, routed per collection, its router): prototypes from the
        training views, and a threshold for each quantile of the grid from the in-domain val images'
        similarity to them (never trained on: how new pictures of the training corpus look)."""
        specialist = self.specialist()
        if specialist is None:
            return
        train = top_outputs(self.parts.top, self.cache.train[:, 0], self.device).float()
        held_out = (
            top_outputs(self.parts.top, self.cache.val, self.device).float() if len(self.cache.val) else train
        )
        router = self.router()
        if router is None:
            specialist.gate.fit(train, self.settings.seed)
            similarity = specialist.gate.similarity(held_out)
        else:  # the router reads the raw block of stored vectors: it is fitted in that block's space
            specialist.gate.threshold.fill_(GATE_OPEN)
            raw_block = self.encoder.image_model.raw_block
            router.fit(raw_block(train), self.settings.seed)
            similarity = router.similarity(raw_block(held_out))
        self.gate_thresholds = {q: float(similarity.quantile(q)) for q in self.settings.gate_quantile_grid}

    def _candidates(self, key: str, grid: list[float], apply) -> list[dict[str, float]]:
        out = []
        for value in grid:
            apply(value)
            metrics = self.validate()
            out.append({**metrics, key: value, "selection_score": self._score(metrics)})
        return out

    def choose_bridge(self) -> dict[str, float]:
        """Anchored head, before training: the class-name bridge's top-k and softmax temperature with
        the best `bridge_score` (v0 keeps its own, 10 and 1). A softer mix of more classes describes
        pictures unlike ImageNet's photos better; the residual then learns on top of the anchor chosen
        here, and selection holds it to that anchor."""
        spec = self.encoder.spec
        top_ks = self.settings.bridge_top_k_grid or [spec.zeroshot_top_k]
        temperatures = self.settings.bridge_temperature_grid or [spec.bridge_temperature]
        candidates, routed = [], self.router() is not None
        for top_k in top_ks:
            for temperature in temperatures:
                bridge = {"bridge_top_k": top_k, "bridge_temperature": temperature}
                self._set_bridge(bridge)
                candidates.append({**bridge, "score": bridge_score(self.validate(), routed=routed)})
        best = max(candidates, key=lambda c: c["score"])
        self.choice_scores["bridge"] = _rounded(
            {f"top{c['bridge_top_k']}_T{c['bridge_temperature']:g}": c["score"] for c in candidates}
        )
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
        off = {"specialist_weight": 0.0} if self.specialist() else {}
        if self.anchored() and epoch:
            candidates = self._residual_candidates()
        else:  # untrained: the specialist block, random yet, stays off
            bridge = self.choose_bridge() if self.anchored() else {}
            self.fit_gate()
            metrics = self.validate()
            self.reference = self.reference or (metrics | self._raw_feature_metrics())
            candidates = [
                {**metrics, **bridge, "interpolation": 1.0, **off, "selection_score": self._score(metrics)}
            ]
        # training moves the residuals as far as selection may keep them (all the way, by default)
        self._interpolate(max(self.settings.interpolation_grid, default=1.0))
        if self.specialist() is not None:  # and the block at its largest weight, behind the most open gate
            heaviest = max(self.settings.specialist_weight_grid)
            self._set_specialist({"specialist_weight": heaviest, "gate_quantile": min(self.gate_thresholds)})
        chosen = max(candidates, key=lambda c: c["selection_score"])
        if self.best is None or chosen["selection_score"] > self.best["metrics"]["selection_score"]:
            state = {k: v.detach().clone() for k, v in self.parts.state_dict().items()}
            self.best = {"epoch": epoch, "metrics": chosen, "parts": state}
        return chosen

    def restore_best(self, pooled_train: torch.Tensor | None) -> dict[str, float]:
        """Load the selected epoch's heads and interpolation, then choose the raw-feature weight (it
        only moves image->image scores) on validation too; the metrics of the model as kept."""
        if self.best is None:
            return {}
        self.parts.load_state_dict(self.best["parts"])
        self._interpolate(self.best["metrics"]["interpolation"])
        chosen = self.best["metrics"]
        self._weigh_specialist(chosen.get("specialist_weight", 0.0))
        has_block = "gate_quantile" in chosen  # the untrained epoch keeps the block off, with no gate
        block = {k: chosen[k] for k in ("specialist_weight", "gate_quantile")} if has_block else {}
        self._set_specialist(block)
        tower = self.encoder.image_model
        if getattr(tower, "raw_feature_weight", 0) and self.router() is not None:
            chosen = {**chosen, **self._choose_outside_block()}  # the stored block stays plain
        elif getattr(tower, "raw_feature_weight", 0) and self.settings.raw_transform_grid:
            chosen = {**chosen, "raw_transform": self._choose_raw_transform(tower, pooled_train)}
        if getattr(tower, "raw_feature_weight", 0) and self.settings.raw_weight_grid:

            def apply(weight: float) -> None:
                tower.raw_feature_weight = weight

            candidates = self._candidates("raw_feature_weight", self.settings.raw_weight_grid, apply)
            self.choice_scores["raw_feature_weight"] = _rounded(
                {f"x{c['raw_feature_weight']:g}": c["selection_score"] for c in candidates}
            )
            chosen = {**chosen, **max(candidates, key=lambda c: c["selection_score"])}
            apply(chosen["raw_feature_weight"])
            self.encoder.spec = replace(self.encoder.spec, raw_feature_weight=chosen["raw_feature_weight"])
        return {"epoch": self.best["epoch"], **(self.bridge or {}), **chosen}

    def _choose_raw_transform(self, tower: ImageTower, pooled_train: torch.Tensor | None) -> str:
        """How the raw block is made (`ImageTower`): the kind with the best mean over every val metric,
        in-domain and out of domain, as the bridge is chosen (it moves image->image scores only)."""
        mean = self._train_raw_mean(pooled_train)
        scores = {}
        for kind in self.settings.raw_transform_grid:
            tower.use_raw_transform(kind, mean)
            scores[kind] = float(np.mean(list(self.validate().values())))
        best = max(scores, key=scores.get)
        self.choice_scores["raw_transform"] = _rounded(scores)
        tower.use_raw_transform(best, mean)
        self.encoder.spec = replace(self.encoder.spec, raw_transform=best)
        return best

    def _choose_outside_block(self) -> dict[str, str | float]:
        """Routed per collection: the raw block of an index of a collection outside, its kind and weight
        with the best mean image->image val nDCG over the outside collections. The stored block stays
        plain (the router reads it); its own weight is chosen after, where it counts: in domain."""
        keys = [f"val_{name}_{IMAGE_TO_IMAGE}_ndcg_at_10" for name in self.outside]
        kinds = self.settings.raw_transform_grid or [PLAIN]
        weights = self.settings.raw_weight_grid or [float(self.encoder.image_model.raw_feature_weight)]
        scores = {}
        for kind in kinds:
            for weight in weights:
                self.encoder.spec = replace(
                    self.encoder.spec, outside_raw_transform=kind, outside_raw_weight=weight
                )
                metrics = self.validate()
                scores[kind, weight] = float(np.mean([metrics[key] for key in keys] or [0.0]))
        kind, weight = max(scores, key=scores.get)
        self.choice_scores["outside_raw"] = _rounded({f"{k}_x{w:g}": v for (k, w), v in scores.items()})
        self.encoder.spec = replace(self.encoder.spec, outside_raw_transform=kind, outside_raw_weight=weight)
        return {"outside_raw_transform": kind, "outside_raw_feature_weight": weight}

    def _train_raw_mean(self, pooled: torch.Tensor | None) -> torch.Tensor:
        """The mean rooted feature vector of the training views (undecodable images' zero rows left out)."""
        if pooled is None:
            pooled = top_outputs(self.parts.top, self.cache.train.flatten(0, 1), self.device)
        rows = pooled.reshape(-1, pooled.shape[-1]).float()
        rows = rows[rows.abs().sum(dim=-1) > 0]
        return rooted(rows).mean(dim=0).to(self.device)
