"""The two towers as ONNX graphs, run by ONNX Runtime: the inference path of serving, backfill and
ad-hoc embedding. Torch stays the training path and the fallback.

Exported once, at registration, into the encoder folder the MLflow model carries (``onnx/``), so
every consumer of a registered model gets the same graphs. ONNX Runtime runs a short query several
times faster than torch eager on CPU (README, "Encoders"); CUDA's provider is used when a GPU is present
and the installed build has it.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ONNX_FOLDER = "onnx"
IMAGE_GRAPH = "image.onnx"
TEXT_GRAPH = "text.onnx"
OPSET = 17
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
FLOAT32, INT8 = "float32", "int8"
INT8_BLOCK = 32  # weights per int8 scale
INT8_COMPUTE = 4  # MatMulNBits accuracy_level: int8 products, activations quantized per block
INT8_KEPT_FLOAT = "/attention/self/value/"  # the products quantization moved most (quantize_text_graph)
FEATURES = "features"  # the image graph's second output (graphs exported before it have one output)


class OnnxUnavailable(RuntimeError):
    """ONNX inference was asked for and cannot run (no graphs in the model, or no runtime)."""


class _ImageGraph(nn.Module):
    """The image tower with its pooled backbone features as a second output (what the backbone cache
    keeps, so one pass serves every head on the same trunk)."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.tower.features(pixels)
        return self.tower.from_features(features), features


class _TextGraph(nn.Module):
    """The text tower with token ids and mask as its only inputs (what the graph is traced from)."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.tower(input_ids=input_ids, attention_mask=attention_mask)


def export_towers(
    image_model: nn.Module, text_model: nn.Module, tokenizer, image_size: int, folder: Path
) -> Path:
    """Trace both towers (on CPU copies, eval mode) into `folder`; batch and sequence stay dynamic."""
    folder.mkdir(parents=True, exist_ok=True)
    _export_image_module(
        _ImageGraph(_cpu_copy(image_model)), image_size, folder / IMAGE_GRAPH, ["vectors", FEATURES]
    )
    text = _TextGraph(copy.deepcopy(text_model).to("cpu").float().eval())
    tokens = tokenizer(["a query", "a longer query of a few words"], padding=True, return_tensors="pt")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            text,
            (tokens["input_ids"], tokens["attention_mask"]),
            str(folder / TEXT_GRAPH),
            input_names=["input_ids", "attention_mask"],
            output_names=["vectors"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "vectors": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    return folder


def _cpu_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to("cpu", memory_format=torch.contiguous_format).float().eval()


def _export_image_module(module: nn.Module, image_size: int, path: Path, outputs: list[str]) -> None:
    """Trace a pixels -> `outputs` module with a dynamic batch."""
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about shapes fixed by the fixed image size
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, image_size, image_size),),
            str(path),
            input_names=["pixels"],
            output_names=outputs,
            dynamic_axes={"pixels": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            opset_version=OPSET,
            dynamo=False,
        )


def cpu_image_session(module: nn.Module, image_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A pixels -> one output module (e.g. a frozen trunk) run by ONNX Runtime on CPU, through a
    temporary graph: about twice torch eager's throughput for EfficientNet-Lite0 on a few cores."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as scratch:  # a session keeps its graph: the file may go
        path = Path(scratch) / "module.onnx"
        _export_image_module(_cpu_copy(module), image_size, path, ["output"])
        session = onnxruntime.InferenceSession(str(path), session_options(), providers=[CPU])
    return lambda pixels: session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def session_options(threads: int = 0, spinning: bool = False):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per physical core
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the CUDA provider's memcpy notes are noise
    # idle threads sleep instead of spinning: on a few cores a spinning pool starves the event loop
    # and the decoders (one short query: p50 3.5 -> 2.8 ms, p99 17 -> 11 ms on a busy 2-core machine;
    # benchmarks/bench_text_threads.py)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def has_graphs(folder: Path) -> bool:
    return (folder / IMAGE_GRAPH).is_file() and (folder / TEXT_GRAPH).is_file()


def providers_for(device: str) -> list[str] | None:
    """The execution providers for `device`; None when this ONNX Runtime build cannot serve it (a CUDA
    device with a CPU-only build: torch on the GPU is then the faster path)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    available = onnxruntime.get_available_providers()
    if device != "cuda":
        return [CPU]
    if CUDA not in available:
        return None
    # CUDA and cuDNN from pip's nvidia-* wheels are not on the loader's path: load them by their own
    # site-packages paths (already loaded, as by torch, is a no-op)
    getattr(onnxruntime, "preload_dlls", lambda: None)()
    return [CUDA, CPU]


def quantize_text_graph(graph: Path, folder: Path) -> Path:
    """`graph` with the weights of its matrix products in int8, written into `folder`: ONNX Runtime's
    `MatMulNBits` with one scale per block of 32 weights, computed in int8 with the activations
    quantized per block too (`accuracy_level` 4). Dynamic quantization (one activation scale per
    call, one weight scale per output channel) left short queries at cosine 0.960 of the float
    vectors; blocks of 32 keep them at >= 0.998 (README, "Encoders"). Attention's value
    projections stay float: quantized one at a time, they moved the vectors most (half the error,
    for a twelfth of the weights). The word-embedding table is gathered, not multiplied, and stays
    float."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantized = folder / f"{graph.stem}.{INT8}.onnx"
    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")  # a line per node
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        model = onnx.load(str(graph))
        sensitive = [node.name for node in model.graph.node if INT8_KEPT_FLOAT in node.name]
        quantizer = MatMulNBitsQuantizer(
            model,
            nodes_to_exclude=sensitive,
            bits=8,
            block_size=INT8_BLOCK,
            is_symmetric=True,
            accuracy_level=INT8_COMPUTE,
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(quantized), use_external_data_format=False)
    finally:
        chatty.setLevel(level)
    return quantized


class OnnxTowers:
    """Inference sessions for both graphs; thread-safe (ONNX Runtime's `run` may be called concurrently).

    `text_precision` 'int8' runs the text graph with int8 weights, quantized here at load (a few
    seconds; any registered version, no new artifact) — on CPU only: dynamic quantization is ONNX
    Runtime's CPU recipe (a GPU wants static QDQ graphs), so with CUDA's provider the float graph runs."""

    def __init__(self, folder: Path, providers: list[str], threads: int = 0, text_precision: str = FLOAT32):
        import onnxruntime

        options = session_options(threads)
        self.image = onnxruntime.InferenceSession(str(folder / IMAGE_GRAPH), options, providers=providers)
        self.has_features = FEATURES in {output.name for output in self.image.get_outputs()}
        self.text_precision = INT8 if text_precision == INT8 and CUDA not in providers else FLOAT32
        with tempfile.TemporaryDirectory() as scratch:  # a session keeps its graph: the file may go
            text = folder / TEXT_GRAPH
            if self.text_precision == INT8:
                text = quantize_text_graph(text, Path(scratch))
            self.text = onnxruntime.InferenceSession(str(text), options, providers=providers)

    @property
    def providers(self) -> list[str]:
        return self.image.get_providers()

    @property
    def description(self) -> str:
        """'onnx:<providers>', with the text graph's precision when it is not float32."""
        precision = "" if self.text_precision == FLOAT32 else f" (text {self.text_precision})"
        return f"onnx:{','.join(self.providers)}{precision}"

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run(["vectors"], {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def pooled_features(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run([FEATURES], {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return self.text.run(None, feed)[0]


def open_towers(
    folder: Path, device: str, runtime: str, threads: int = 0, text_precision: str = FLOAT32
) -> OnnxTowers | None:
    """The ONNX sessions for an encoder folder, or None for torch: `runtime` 'torch' always, 'auto'
    when the folder has no graphs or the runtime cannot serve the device, 'onnx' never (it raises)."""
    if runtime == "torch":
        return None
    graphs = folder / ONNX_FOLDER
    providers = providers_for(device)
    if has_graphs(graphs) and providers is not None:
        return OnnxTowers(graphs, providers, threads, text_precision)
    if runtime == "onnx":
        why = (
            "has no ONNX graphs (register it again)"
            if not has_graphs(graphs)
            else (f"cannot run on {device!r} with this ONNX Runtime build")
        )
        raise OnnxUnavailable(f"model.runtime is 'onnx' but the encoder at {folder} {why}")
    return None
