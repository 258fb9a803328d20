"""Random views of an image for training, and the reader that decodes each image once for all views.

A view: the shared preprocessing's letterbox, then crop, flip, colour jitter, grayscale and blur
(the SimCLR family of augmentations), then the backbone's normalisation. View 0 of a clean image is
exactly what the backfill and the service compute.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from imagesearch.common.images import DecodeLimits, ImageRejected, open_rgb
from imagesearch.models.preprocess import Preprocessor, letterbox


def view_transform(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.4, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=0.3),
        ]
    )


AUGMENTATIONS = (
    "letterbox -> RandomResizedCrop(scale 0.4-1) -> HorizontalFlip -> ColorJitter(0.4,0.4,0.4,0.1) p0.8 "
    "-> Grayscale p0.2 -> GaussianBlur(9, sigma 0.1-2) p0.3"
)


class ImageViews(Dataset):
    """Reader: (position, tensor of `views` views or None, rejection reason) per image path.

    `augment=False` gives the clean view. Each (image id, view) draws from its own seed, so the cached
    views are the same on every run and machine, whatever the worker count or checkout location.
    """

    def __init__(
        self,
        paths: list[str],
        ids: list[str],
        preprocessor: Preprocessor,
        limits: DecodeLimits,
        *,
        views: int,
        augment: bool,
        seed: int,
    ):
        self.paths, self.ids, self.preprocessor, self.limits = paths, ids, preprocessor, limits
        self.views, self.augment, self.seed = views, augment, seed
        self.transform = view_transform(preprocessor.size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            # reduced while decoding, like every other stage's pixels (Preprocessor)
            size = self.preprocessor.size
            decoded = open_rgb(Path(self.paths[position]), self.limits, reduce_to=2 * size)
            square = letterbox(decoded.rgb, size)
        except ImageRejected as error:
            return position, None, str(error.reason)
        except OSError as error:
            return position, None, f"unreadable: {error.strerror or error}"
        views = [self.preprocessor.pixels(self._view(square, position, v)) for v in range(self.views)]
        return position, torch.stack(views), ""

    def _view(self, square: Image.Image, position: int, view: int) -> Image.Image:
        if not self.augment:
            return square
        key = f"{self.seed}:{self.ids[position]}:{view}".encode()
        torch.manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))
        return self.transform(square)
