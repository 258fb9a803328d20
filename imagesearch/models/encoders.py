"""Image and text encoders into one space: the numpy-facing `Encoder` over the towers of `towers`.

Three kinds share one interface:
- ``zeroshot`` (v0): no training. An image becomes the mix of the text embeddings of its top ImageNet
  classes (prompted class names), weighted by the classifier's probabilities; a text is its MiniLM
  embedding. Text queries work from the first run.
- ``anchored`` (the default trained model): the text tower is locked (MiniLM as is, LiT-style) and the
  image tower maps into its space as v0's bridge *plus* a learned residual scaled by `interpolation`
  (0 = v0, 1 = the fine-tuned head: WiSE-FT's interpolation between zero-shot and fine-tuned). Both
  start from pretrained knowledge, so what the training corpus does not teach stays as it was.
- ``two_tower``: timm image backbone + projection, MiniLM text transformer (mean pooling) + projection,
  both into `embed_dim`, co-trained from random heads (the round-one recipe: best in-domain, forgets
  out of domain).

Trained kinds may append the backbone's own pooled features, scaled by `raw_feature_weight`, to the
image vector (and zeros to the text vector): text->image scores are unchanged, image->image scores add
the pretrained similarity, which is what generalises best for "more like this". Still one plain
two-tower encoder: one vector per image or text, one index, one dot product.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from imagesearch.common.io import folder_atomic
from imagesearch.models.backbones import backbone_key
from imagesearch.models.onnx_runtime import FLOAT32, ONNX_FOLDER, OnnxTowers, export_towers, open_towers
from imagesearch.models.preprocess import ImageInput, Preprocessor
from imagesearch.models.towers import (
    COLLECTION,
    FEATURES,
    IMAGE,
    PLAIN,
    AnchoredProjection,
    CollectionRouter,
    ImageTower,
    ResidualText,
    TextTower,
    ZeroPadded,
    ZeroShotImageBridge,
)

FORMAT_VERSION = 1
TWO_TOWER = "two_tower"
ZEROSHOT = "zeroshot"
ANCHORED = "anchored"


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild an encoder's modules before loading its weights."""

    kind: str
    image_backbone: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    text_max_length: int
    zeroshot_top_k: int = 10
    format_version: int = FORMAT_VERSION
    raw_feature_weight: float = 0.0  # trained kinds: backbone features appended to image vectors
    text_residual: bool = False  # anchored: the text side learns a residual on MiniLM
    bridge_temperature: float = 1.0  # anchored: softmax temperature of the class-name bridge
    raw_transform: str = PLAIN  # trained kinds: how the raw block is made (ImageTower)
    outside_raw_transform: str = PLAIN  # routed per collection: the raw block of an index outside
    outside_raw_weight: float = 0.0  # ... and its weight (0 = the stored block's)
    image_residual: str = FEATURES  # anchored: what the image residual reads (AnchoredProjection)
    specialist_dim: int = 0  # anchored: width of the domain-gated specialist block (0 = none)
    classifier_residual: bool = False  # anchored: the bridge's class logits learn a correction
    specialist_routing: str = IMAGE  # the specialist block's gate decides per image or per collection


class Encoder:
    """Turns images and texts into L2-normalised float32 vectors of one space.

    Inference runs on the ONNX graphs when `onnx` holds their sessions (a registered model), else on
    the torch modules, which training always uses."""

    def __init__(
        self,
        spec: EncoderSpec,
        image_model: nn.Module,
        text_model: TextTower,
        tokenizer,
        device: str,
        onnx: OnnxTowers | None = None,
    ):
        self.spec = spec
        self.onnx = onnx
        self.device = torch.device(device)
        self.image_model = image_model.to(self.device).eval()
        self.text_model = text_model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.preprocessor = Preprocessor(spec.image_size, spec.mean, spec.std)
        # NHWC convolutions: 1.5x faster at batch 32 on this CPU too (benchmarks/bench_encoders.py)
        self.image_model = self.image_model.to(memory_format=torch.channels_last)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        return torch.stack([self.preprocessor(image) for image in images])

    @property
    def runtime(self) -> str:
        """What runs inference: 'onnx:<providers>' or 'torch:<device>'."""
        return self.onnx.description if self.onnx else f"torch:{self.device.type}"

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        if self.onnx is not None:
            return self.onnx.encode_pixels(pixels.numpy())
        pixels = pixels.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return self.image_model(pixels).float().cpu().numpy()

    @property
    def backbone(self) -> nn.Module:
        """The pretrained timm model whose pooled features every image vector is computed from."""
        model = self.image_model
        return model.backbone if isinstance(model, ImageTower) else model.classifier

    @property
    def backbone_key(self) -> str:
        """Equal for every encoder sharing this trunk and preprocessing (their cached features too).
        Computed from the weights each time (tens of ms): training may change them in place."""
        return backbone_key(self.backbone, self.preprocessor)

    @torch.inference_mode()
    def pooled_features(self, pixels: torch.Tensor) -> np.ndarray:
        """The backbone's pooled features (from the ONNX graph when it has that output)."""
        if self.onnx is not None and self.onnx.has_features:
            return self.onnx.pooled_features(pixels.numpy())
        pixels = pixels.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return self.image_model.features(pixels).float().cpu().numpy()

    @torch.inference_mode()
    def encode_features(self, features: np.ndarray) -> np.ndarray:
        """Image vectors from pooled backbone features: the head alone, no pixels."""
        if not len(features):
            return np.zeros((0, self.dim), np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        return self.image_model.from_features(tensor).float().cpu().numpy()

    def specialist_columns(self) -> slice | None:
        """Where image and text vectors hold the specialist block (its filler column included)."""
        if not self.spec.specialist_dim:
            return None
        end = self.spec.dim - self.raw_width()
        return slice(end - self.spec.specialist_dim - 1, end)

    def raw_width(self) -> int:
        """Columns of the raw block at the end of each image vector (0 = none)."""
        return self.backbone.num_features if self.spec.raw_feature_weight else 0

    @property
    def routes(self) -> bool:
        """Whether an index of this encoder's vectors decides per collection (`models.routing`)."""
        return getattr(self.image_model, "router", None) is not None

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        batches = [
            self.encode_pixels(self.preprocess(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(batches) if batches else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            if self.onnx is not None:
                tokens = self._tokens(chunk, "np")
                out.append(self.onnx.encode_tokens(tokens["input_ids"], tokens["attention_mask"]))
            else:
                out.append(self.text_model(**self.tokenize(chunk)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self._tokens(texts, "pt")
        return {
            "input_ids": tokens["input_ids"].to(self.device),
            "attention_mask": tokens["attention_mask"].to(self.device),
        }

    def _tokens(self, texts: list[str], tensors: str):
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.spec.text_max_length, return_tensors=tensors
        )

    def export_onnx(self, folder: Path) -> Path:
        """Both towers as ONNX graphs in `folder`/onnx (what `load` runs them from)."""
        return export_towers(
            self.image_model, self.text_model, self.tokenizer, self.spec.image_size, folder / ONNX_FOLDER
        )

    # --- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        """Spec (JSON) + state dicts (torch, read back with weights_only) + the HF text model folder,
        written whole or not at all (a killed save leaves the previous folder, never half of one)."""
        with folder_atomic(folder) as staging:
            torch.save(_cpu_state(self.image_model), staging / "image.pt")
            # the head alone (not its zero padding): the file format of every earlier version
            torch.save(_cpu_state(self.text_model.head()), staging / "text_projection.pt")
            self.text_model.transformer.save_pretrained(staging / "text_model")
            self.tokenizer.save_pretrained(staging / "text_model")
            (staging / "encoder.json").write_text(json.dumps(asdict(self.spec), indent=2))
        return folder

    @classmethod
    def load(
        cls,
        folder: Path,
        device: str = "auto",
        runtime: str = "auto",
        threads: int = 0,
        text_precision: str = FLOAT32,
    ) -> Encoder:
        """`runtime`: 'auto' runs the folder's ONNX graphs when it has them and ONNX Runtime can serve
        `device`, 'onnx' insists on them, 'torch' never uses them. `threads`: ONNX Runtime's intra-op
        threads (0 = its default). `text_precision`: 'int8' quantizes the text graph (ONNX, CPU)."""
        from transformers import AutoModel, AutoTokenizer

        raw = json.loads((folder / "encoder.json").read_text())
        spec = EncoderSpec(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
        if spec.format_version != FORMAT_VERSION:
            raise ValueError(f"encoder format {spec.format_version} is not supported (want {FORMAT_VERSION})")
        backbone = timm.create_model(spec.image_backbone, pretrained=False)
        transformer = AutoModel.from_pretrained(folder / "text_model", local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder / "text_model", local_files_only=True)
        hidden = transformer.config.hidden_size
        if spec.kind == ZEROSHOT:
            image_model: nn.Module = ZeroShotImageBridge(
                backbone, torch.zeros(backbone.num_classes, hidden), spec.zeroshot_top_k
            )
            projection: nn.Module = nn.Identity()
        else:
            image_model, trained_head = trained_towers(spec, backbone, hidden)
            projection = ZeroPadded(trained_head, backbone.num_features if spec.raw_feature_weight else 0)
        image_model.load_state_dict(torch.load(folder / "image.pt", map_location="cpu", weights_only=True))
        text_head = projection.projection if isinstance(projection, ZeroPadded) else projection
        text_head.load_state_dict(
            torch.load(folder / "text_projection.pt", map_location="cpu", weights_only=True)
        )
        device = resolve_device(device)
        onnx = open_towers(folder, device, runtime, threads, text_precision)
        return cls(spec, image_model, TextTower(transformer, projection), tokenizer, device, onnx)


def trained_towers(spec: EncoderSpec, backbone: nn.Module, hidden: int) -> tuple[ImageTower, nn.Module]:
    """The image tower and the text head of a trained kind, freshly initialised."""
    raw_width = backbone.num_features if spec.raw_feature_weight else 0
    shared = spec.dim - raw_width
    if spec.kind == ANCHORED:
        projection: nn.Module = AnchoredProjection(
            backbone.get_classifier(),
            torch.zeros(backbone.num_classes, hidden),
            spec.zeroshot_top_k,
            hidden,
            spec.bridge_temperature,
            spec.image_residual,
            spec.specialist_dim,
            spec.classifier_residual,
        )
        text_head: nn.Module = (
            ResidualText(hidden, spec.specialist_dim) if spec.text_residual else nn.Identity()
        )
    elif spec.kind == TWO_TOWER:
        projection = nn.Linear(backbone.num_features, shared)
        text_head = nn.Linear(hidden, shared)
    else:
        raise ValueError(f"unknown encoder kind {spec.kind!r}")
    routed = spec.kind == ANCHORED and spec.specialist_dim and spec.specialist_routing == COLLECTION
    router = CollectionRouter(backbone.num_features) if routed else None
    tower = ImageTower(backbone, projection, spec.raw_feature_weight, spec.raw_transform, router)
    return tower, text_head


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return device
