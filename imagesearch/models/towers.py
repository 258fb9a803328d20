"""The torch modules of the two towers: image tower and its heads (v0's class-name bridge, the anchored
projection, the raw block), the text tower and its heads. `encoders` puts them together.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PLAIN, SQRT_CENTERED = "plain", "sqrt_centered"
RAW_TRANSFORMS = (PLAIN, SQRT_CENTERED)
FEATURES, CLASSES = "features", "classes"  # what an anchored image residual reads
RESIDUAL_INPUTS = (FEATURES, CLASSES)
GATE_PROTOTYPES = 1024  # training views a domain gate compares an image with
GATE_NEIGHBOURS = 5  # ... through its mean cosine to the nearest of them
GATE_RAMP = 0.05  # cosine over which the gate goes from shut (exactly 0) to open (exactly 1)
GATE_OPEN, GATE_SHUT = -2.0, 2.0  # thresholds below / above any cosine
IMAGE, COLLECTION = "image", "collection"  # what the specialist block's gate decides for


class ImageTower(nn.Module):
    """Backbone features -> projection -> unit vector [+ the scaled raw block] -> unit.

    The raw block is the backbone's pooled features as they are (`plain`) or, `sqrt_centered`, their
    square root (a Hellinger map: no one large activation dominates the cosine, as RootSIFT does for
    descriptors), unit-normalised, minus the training images' mean of the same (what every image
    shares says nothing about which images are alike), unit-normalised."""

    def __init__(
        self,
        backbone: nn.Module,
        projection: nn.Module,
        raw_feature_weight: float = 0.0,
        raw_transform: str = PLAIN,
        router: CollectionRouter | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        self.router = router  # routes the specialist block per collection (see CollectionRouter)
        self.raw_feature_weight = raw_feature_weight
        self.raw_transform = PLAIN
        if raw_transform == SQRT_CENTERED:
            self.use_raw_transform(SQRT_CENTERED, torch.zeros(backbone.num_features))

    def use_raw_transform(self, kind: str, mean: torch.Tensor | None = None) -> None:
        """`plain`, or `sqrt_centered` around `mean` (saved with the weights, as buffer `raw_mean`)."""
        if kind not in RAW_TRANSFORMS:
            raise ValueError(f"unknown raw transform {kind!r}: one of {RAW_TRANSFORMS}")
        self._buffers.pop("raw_mean", None)
        if kind == SQRT_CENTERED:
            if mean is None:
                raise ValueError("the sqrt_centered raw block needs the training images' mean")
            self.register_buffer("raw_mean", mean.detach().float().clone())
        self.raw_transform = kind

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(pixels), pre_logits=True)

    def raw_block(self, features: torch.Tensor) -> torch.Tensor:
        if self.raw_transform == SQRT_CENTERED:
            return F.normalize(rooted(features) - self.raw_mean, dim=-1)
        return F.normalize(features.float(), dim=-1)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The image vector from pooled backbone features (what training and validation use)."""
        projected = F.normalize(self.projection(features), dim=-1)
        if not self.raw_feature_weight:
            return projected
        raw = self.raw_block(features) * self.raw_feature_weight
        return F.normalize(torch.cat([projected, raw.to(projected.dtype)], dim=-1), dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(pixels))


def rooted(features: torch.Tensor) -> torch.Tensor:
    """Unit-normalised square roots of pooled (non-negative, post-activation) features."""
    return F.normalize(features.float().clamp(min=0).sqrt(), dim=-1)


class AnchoredProjection(nn.Module):
    """Pooled features -> v0's class-name bridge + interpolation x a learned residual (zero at start).

    The residual reads the pooled features (`FEATURES`), or the bridge's sparse class mix (`CLASSES`):
    a learned correction of each class name's embedding, bounded by the mix whatever the picture."""

    def __init__(
        self,
        classifier: nn.Module,
        class_embeddings: torch.Tensor,
        top_k: int,
        dim: int,
        temperature: float = 1.0,
        residual_input: str = FEATURES,
        specialist_dim: int = 0,
        classifier_residual: bool = False,
    ):
        super().__init__()
        if residual_input not in RESIDUAL_INPUTS:
            raise ValueError(f"unknown residual input {residual_input!r}; use one of {RESIDUAL_INPUTS}")
        # the anchor is pretrained and stays so: only the residual learns (a trained classifier moved
        # the class mix itself, so interpolation 0 was no longer the untrained anchor)
        self.classifier = classifier.requires_grad_(False)
        self.register_buffer("class_embeddings", class_embeddings)
        # a softer, wider mix of classes than v0's transfers better (chosen on validation in training)
        self.top_k, self.temperature = top_k, temperature
        self.on_classes = residual_input == CLASSES
        width = class_embeddings.shape[0] if self.on_classes else classifier.in_features
        self.residual = nn.Linear(width, dim)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.register_buffer("interpolation", torch.tensor(1.0))
        self.specialist = SpecialistImage(classifier.in_features, specialist_dim) if specialist_dim else None
        # which classes a clip-art picture mixes may need learning too: a correction of the logits,
        # zero at start and scaled like the residual, so interpolation 0 stays the pretrained mix
        self.classifier_residual = None
        if classifier_residual:
            self.classifier_residual = nn.Linear(classifier.in_features, class_embeddings.shape[0])
            nn.init.zeros_(self.classifier_residual.weight)
            nn.init.zeros_(self.classifier_residual.bias)

    def class_mix(self, features: torch.Tensor, corrected: bool = True) -> torch.Tensor:
        """The top-k class probabilities at the bridge's temperature, zero elsewhere."""
        logits = self.classifier(features).float()
        if corrected and self.classifier_residual is not None:
            logits = logits + self.interpolation * self.classifier_residual(features).float()
        probabilities = (logits / self.temperature).softmax(dim=-1)
        top = probabilities.topk(self.top_k, dim=-1)
        return torch.zeros_like(probabilities).scatter_(-1, top.indices, top.values)

    def anchor(self, features: torch.Tensor) -> torch.Tensor:
        """The class-name bridge alone: what the untrained model (v0 with this bridge) embeds."""
        return self._bridged(self.class_mix(features, corrected=False))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mix = self.class_mix(features)
        correction = self.residual(mix if self.on_classes else features).float()
        anchored = self._bridged(mix) + self.interpolation * correction
        if self.specialist is None:
            return anchored
        return torch.cat([F.normalize(anchored, dim=-1), self.specialist(features)], dim=-1)

    def _bridged(self, mix: torch.Tensor) -> torch.Tensor:
        return F.normalize(mix @ self.class_embeddings, dim=-1)


class ResidualText(nn.Module):
    """The locked text embedding + interpolation x a learned residual (zero at start): the text side of
    the anchored head, so both towers can adapt while both start, and can be pulled back, at v0."""

    def __init__(self, hidden: int, specialist_dim: int = 0):
        super().__init__()
        self.residual = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.register_buffer("interpolation", torch.tensor(1.0))
        self.specialist = SpecialistText(hidden, specialist_dim) if specialist_dim else None

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        anchored = pooled + self.interpolation * self.residual(pooled)
        if self.specialist is None:
            return anchored
        return torch.cat([F.normalize(anchored, dim=-1), self.specialist(pooled)], dim=-1)


class DomainGate(nn.Module):
    """How much an image looks like the training corpus, in [0, 1]: the mean cosine of its rooted,
    centred features to its nearest stored training views, on a linear ramp centred on `threshold`
    (shut until set: training chooses it from held-out in-domain images). It decides where the
    specialist block may speak: a user's collection unlike the training corpus gets the anchored
    model's scores, untouched. Shut means exactly 0: a sigmoid's small leak let the block reorder a
    collection whose anchored scores lie close together."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(GATE_PROTOTYPES, width))
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("threshold", torch.tensor(GATE_SHUT))

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        centred = F.normalize(rooted(features) - self.mean, dim=-1)
        nearest = (centred @ self.prototypes.T).topk(GATE_NEIGHBOURS, dim=-1).values
        return nearest.mean(dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return ((self.similarity(features) - self.threshold) / GATE_RAMP + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def fit(self, train: torch.Tensor, seed: int) -> None:
        """The prototypes: training views drawn at random (with replacement when there are fewer)."""
        train = train.float()
        self.mean.copy_(rooted(train).mean(dim=0))
        self.prototypes.copy_(F.normalize(rooted(train[_drawn(len(train), seed)]) - self.mean, dim=-1))


class CollectionRouter(nn.Module):
    """Whether a whole collection looks like the training corpus: the median, over its images, of the
    mean cosine of each image's raw block to its nearest stored training views, against `threshold`
    (a quantile of the in-domain val images' similarity, chosen in training). Single images of two
    collections overlap; their medians do not (README, "What generalizes"). It reads image vectors
    as stored (their raw block, `plain`), so an index build can decide from the vectors alone; the
    index of a collection outside holds the anchored model's vectors (`models/routing.py`), whose raw
    block may be `sqrt_centered` around `raw_mean`."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(GATE_PROTOTYPES, width))
        self.register_buffer("threshold", torch.tensor(GATE_SHUT))  # unfitted: every collection outside
        self.register_buffer("raw_mean", torch.zeros(width))  # the training views' mean rooted block

    def similarity(self, raw_blocks: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(raw_blocks.float(), dim=-1)
        return (unit @ self.prototypes.T).topk(GATE_NEIGHBOURS, dim=-1).values.mean(dim=-1)

    def inside(self, raw_blocks: torch.Tensor) -> bool:
        return bool(len(raw_blocks)) and float(self.similarity(raw_blocks).median()) >= float(self.threshold)

    @torch.no_grad()
    def fit(self, train_raw_blocks: torch.Tensor, seed: int) -> None:
        self.prototypes.copy_(
            F.normalize(train_raw_blocks.float()[_drawn(len(train_raw_blocks), seed)], dim=-1)
        )
        decoded = train_raw_blocks[train_raw_blocks.abs().sum(dim=-1) > 0]  # undecodable views are zeros
        self.raw_mean.copy_(rooted(decoded).mean(dim=0))


def _drawn(count: int, seed: int) -> torch.Tensor:
    """GATE_PROTOTYPES row positions drawn at random (with replacement when there are fewer)."""
    generator = torch.Generator().manual_seed(seed)
    if count >= GATE_PROTOTYPES:
        return torch.randperm(count, generator=generator)[:GATE_PROTOTYPES]
    return torch.randint(count, (GATE_PROTOTYPES,), generator=generator)


class SpecialistImage(nn.Module):
    """The image side of the specialist block: a freely trained projection, counted as much as the
    domain gate lets it, then a filler column that keeps every image vector's norm the same, so an
    image the gate shuts out ranks by the anchored part alone. Scaled by `weight` (0 = off)."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.projection = nn.Linear(width, dim)
        self.gate = DomainGate(width)
        self.register_buffer("weight", torch.tensor(0.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        inside = self.gate(features.float()).unsqueeze(-1)
        projected = inside * F.normalize(self.projection(features).float(), dim=-1)
        return self.weight * torch.cat([projected, (1 - inside * inside).clamp(min=0).sqrt()], dim=-1)


class SpecialistText(nn.Module):
    """The text side of the specialist block: a freely trained projection of the pooled text, and a
    zero where images carry their filler column. Scaled by `weight` as the image side is."""

    def __init__(self, hidden: int, dim: int):
        super().__init__()
        self.projection = nn.Linear(hidden, dim)
        self.register_buffer("weight", torch.tensor(0.0))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.projection(pooled).float(), dim=-1)
        return self.weight * F.pad(projected, (0, 1))


def set_specialist_weight(module: nn.Module, weight: float) -> None:
    """Scale both sides of an encoder's specialist block (0 = the anchored model alone)."""
    for part in module.modules():
        if isinstance(part, SpecialistImage | SpecialistText):
            part.weight.fill_(weight)


def set_interpolation(module: nn.Module, weight: float) -> None:
    """Scale every learned residual of an anchored encoder (0 = v0, 1 = as trained)."""
    for part in module.modules():
        if isinstance(part, AnchoredProjection | ResidualText):
            part.interpolation.fill_(weight)


class ZeroPadded(nn.Module):
    """A text vector padded with zeros where image vectors carry raw backbone features."""

    def __init__(self, projection: nn.Module, padding: int):
        super().__init__()
        self.projection = projection
        self.padding = padding

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.projection(pooled), dim=-1)
        return F.pad(projected, (0, self.padding)) if self.padding else projected


class ZeroShotImageBridge(nn.Module):
    """Classifier probabilities (top-k) x class-name text embeddings -> unit vector in text space."""

    def __init__(self, classifier: nn.Module, class_embeddings: torch.Tensor, top_k: int):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("class_embeddings", class_embeddings)
        self.top_k = top_k

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_head(self.classifier.forward_features(pixels), pre_logits=True)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        probabilities = self.classifier.get_classifier()(features).softmax(dim=-1)
        top = probabilities.topk(self.top_k, dim=-1)
        sparse = torch.zeros_like(probabilities).scatter_(-1, top.indices, top.values)
        return F.normalize(sparse @ self.class_embeddings, dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(pixels))


class TextTower(nn.Module):
    """Transformer -> mean pooling over real tokens -> projection (identity for v0) -> unit vector."""

    def __init__(self, transformer: nn.Module, projection: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.projection = projection

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def head(self) -> nn.Module:
        """The projection without the zero padding: the text side of training's shared space."""
        return self.projection.projection if isinstance(self.projection, ZeroPadded) else self.projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.pooled(input_ids, attention_mask)), dim=-1)
