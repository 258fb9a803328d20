"""Decode any image file into the one RGB form every stage uses.

`open_rgb` is the single decode path shared by cataloguing, training, backfill and serving, so an
image that passes the catalog is guaranteed to decode identically everywhere later.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagesearch.settings import CatalogSettings

WHITE = (255, 255, 255)
EXIF_ORIENTATION_TAG = 0x0112


class RejectReason(StrEnum):
    """Why an image file was quarantined."""

    EMPTY_FILE = "empty_file"
    TOO_LARGE_FILE = "too_large_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_SMALL = "too_small"
    DUPLICATE = "duplicate"
    UNREADABLE = "unreadable"
    OUTSIDE_SOURCE = "outside_source"


class ImageRejected(Exception):
    """An image file that cannot be used, with a machine-readable reason."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image in canonical RGB form plus what the file said about itself."""

    rgb: Image.Image
    format: str
    mode: str
    n_frames: int
    has_alpha: bool
    exif_orientation: int


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_image_pixels: int = 64_000_000
    min_side: int = 1
    max_file_bytes: int = 64 * 1024 * 1024


DEFAULT_LIMITS = DecodeLimits()


def decode_limits(catalog: CatalogSettings, *, max_file_bytes: int | None = None) -> DecodeLimits:
    """The limits every decode of the project applies: catalog, backfill, training, ad-hoc embedding
    and uploads (which pass their own, smaller, byte limit)."""
    return DecodeLimits(catalog.max_image_pixels, catalog.min_side, max_file_bytes or catalog.max_file_bytes)


def open_rgb(
    source: str | Path | bytes, limits: DecodeLimits = DEFAULT_LIMITS, *, reduce_to: int | None = None
) -> DecodedImage:
    """Decode a file path or raw bytes into upright RGB; raise `ImageRejected` if it is unusable.

    Handles palette / RGBA / LA (composited onto white), CMYK, 16-bit and float modes, animated
    images (first frame) and EXIF orientation. All pixels are decoded, so truncation is caught here.
    `reduce_to` (queries only: catalog decodes stay exact) shrinks a large image towards that side
    while decoding (JPEG) or right after it, before any full-size copy in another mode is made.
    """
    data = _read_bytes(source, limits)
    _raise_pillow_bomb_limit_to(limits.max_image_pixels)
    with warnings.catch_warnings():
        # Our own size check (before any pixel is decoded) is the limit; Pillow's warning is noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                _check_size(image, limits)
                image.seek(0)
                if reduce_to and image.format == "JPEG":
                    image.draft("RGB", (reduce_to, reduce_to))
                image.load()
                return _canonicalise(_reduced(image, reduce_to) if reduce_to else image)
        except ImageRejected:
            raise
        except Image.DecompressionBombError as error:
            raise ImageRejected(RejectReason.DECOMPRESSION_BOMB, str(error)) from error
        except UnidentifiedImageError as error:
            raise ImageRejected(RejectReason.NOT_AN_IMAGE, "no image format recognised the file") from error
        except OSError as error:
            reason = RejectReason.TRUNCATED if "truncated" in str(error).lower() else RejectReason.CORRUPT
            raise ImageRejected(reason, str(error)) from error
        except (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError) as error:
            # Malformed headers surface from Pillow's plugins as these types.
            raise ImageRejected(RejectReason.CORRUPT, f"{type(error).__name__}: {error}") from error


def _raise_pillow_bomb_limit_to(max_pixels: int) -> None:
    """Pillow refuses outright above twice its global limit; never let that be below ours.

    Only ever raised, never lowered, so concurrent callers cannot undo each other.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _read_bytes(source: str | Path | bytes, limits: DecodeLimits) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        try:
            path = Path(source)
            size = path.stat().st_size
            if size > limits.max_file_bytes:
                raise ImageRejected(RejectReason.TOO_LARGE_FILE, f"{size} bytes > {limits.max_file_bytes}")
            data = path.read_bytes()
        except OSError as error:
            raise ImageRejected(RejectReason.UNREADABLE, str(error)) from error
    if not data:
        raise ImageRejected(RejectReason.EMPTY_FILE, "file has 0 bytes")
    if len(data) > limits.max_file_bytes:
        raise ImageRejected(RejectReason.TOO_LARGE_FILE, f"{len(data)} bytes > {limits.max_file_bytes}")
    return data


def _check_size(image: Image.Image, limits: DecodeLimits) -> None:
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise ImageRejected(
            RejectReason.DECOMPRESSION_BOMB,
            f"{width}x{height} = {width * height} pixels > limit {limits.max_image_pixels}",
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(RejectReason.TOO_SMALL, f"{width}x{height} is below {limits.min_side} px")


def _reduced(image: Image.Image, side: int) -> Image.Image:
    """At most ~2x `side` on the short edge: a cheap box reduction, or nearest for palette images
    (whose colours cannot be averaged without a 4-byte RGBA copy of the full image)."""
    factor = min(image.size) // (2 * side)
    if factor < 2:
        return image
    size = (image.width // factor, image.height // factor)
    if image.mode in ("1", "P"):
        reduced = image.resize(size, Image.Resampling.NEAREST)
        reduced.info = image.info
        return reduced
    try:
        return image.reduce(factor)
    except ValueError:  # modes `reduce` does not take (16-bit): an area-averaging resize does
        return image.resize(size, Image.Resampling.BOX)


def _canonicalise(image: Image.Image) -> DecodedImage:
    exif_orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    upright = ImageOps.exif_transpose(image) or image
    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        upright.mode == "P" and "transparency" in upright.info
    )
    return DecodedImage(
        rgb=to_rgb(upright),
        format=image.format or "unknown",
        mode=image.mode,
        n_frames=int(getattr(image, "n_frames", 1)),
        has_alpha=has_alpha,
        exif_orientation=exif_orientation,
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_bit_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit or float greyscale to 8 bits; Pillow's own convert clips instead of scaling.
    Row blocks in float32 keep the working memory at a few megabytes whatever the image's size."""
    pixels = np.asarray(image)
    if image.mode.startswith("I;16"):
        low, scale = 0.0, 1 / 257.0
    else:
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
    out = np.empty(pixels.shape, np.uint8)
    rows = max(1, (1 << 20) // max(1, pixels.shape[1]))
    for start in range(0, pixels.shape[0], rows):
        block = (pixels[start : start + rows].astype(np.float32) - low) * scale
        out[start : start + rows] = np.clip(np.rint(block), 0, 255)
    return Image.fromarray(out, mode="L")
