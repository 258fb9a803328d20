"""The one image preprocessing used by training, backfill and serving.

decode (`images.open_rgb`: EXIF, alpha onto white, modes) -> aspect-preserving resize + white padding
to a square -> the backbone's own mean/std from timm's pretrained config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as F

from imagesearch.common.images import DEFAULT_LIMITS, WHITE, DecodeLimits, open_rgb

ImageInput = Image.Image | str | Path | bytes
PREPROCESS_VERSION = 1  # bump when the pixels below change: cached backbone features then go stale


@dataclass(frozen=True, slots=True)
class Preprocessor:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_backbone(cls, backbone: torch.nn.Module, size: int) -> Preprocessor:
        config = getattr(backbone, "pretrained_cfg", {}) or {}
        mean = tuple(config.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(config.get("std", (0.229, 0.224, 0.225)))
        return cls(size=size, mean=mean, std=std)

    def __call__(
        self, image: ImageInput, limits: DecodeLimits = DEFAULT_LIMITS, *, reduce: bool = True
    ) -> torch.Tensor:
        """(3, size, size) float tensor, normalised. `reduce`: shrink large images to ~2x `size` while
        decoding (JPEG's DCT scaling, else a box reduction) before the bicubic letterbox: a 12-MP photo
        decodes several times faster in a fraction of the memory, and every stage (training, backfill,
        uploads) sees the same pixels. The catalog's validation decode stays full-size."""
        if isinstance(image, Image.Image):
            rgb = image.convert("RGB")
        else:
            rgb = open_rgb(image, limits, reduce_to=2 * self.size if reduce else None).rgb
        return self.pixels(letterbox(rgb, self.size))

    def pixels(self, square: Image.Image) -> torch.Tensor:
        tensor = F.to_dtype(F.pil_to_tensor(square), torch.float32, scale=True)
        return F.normalize(tensor, list(self.mean), list(self.std))


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Fit inside size x size keeping the aspect ratio, pad with white (clip art's own background)."""
    return ImageOps.pad(image, (size, size), method=Image.Resampling.BICUBIC, color=WHITE)
