"""What a training step learns and the small pieces of one: the heads and the temperature, the
learning-rate schedule, top-k rankings and same-item masks."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from imagesearch.models.encoders import Encoder
from imagesearch.training.features import autocast_for


class LearnedParts(nn.Module):
    """What learns: the image top (in phase 2), both projection heads and the temperature."""

    def __init__(self, encoder: Encoder, top: nn.Module, temperature: float, learn_temperature: bool):
        super().__init__()
        self.top = top
        self.image_projection = encoder.image_model.projection
        self.text_projection = encoder.text_model.head()
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1 / temperature)), requires_grad=learn_temperature
        )

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def images(self, features: torch.Tensor, *, pooled: bool) -> torch.Tensor:
        return F.normalize(self.image_projection(features if pooled else self.top(features)), dim=-1)

    def texts(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(pooled), dim=-1)


def top_outputs(top: nn.Module, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Top outputs (backbone features) of cached trunk features, without gradients, on the CPU."""
    with torch.inference_mode(), autocast_for(device):
        batches = [features[i : i + 256] for i in range(0, len(features), 256)]
        return torch.cat([top(batch.to(device).float()).float().cpu() for batch in batches])


def ranked_ids(
    similarity: torch.Tensor, ids: list[str], *, exclude_self: bool, k: int = 10
) -> list[list[str]]:
    if exclude_self:
        similarity = similarity.clone().fill_diagonal_(-float("inf"))
    top = torch.topk(similarity, min(k, similarity.shape[1]), dim=1).indices.numpy()
    return [[ids[j] for j in row] for row in top]


def equal_pairs(values: np.ndarray) -> np.ndarray:
    return values[:, None] == values[None, :]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
