"""Contrastive co-training of the image and text towers on the mixed training examples.

Pretrained backbones, two phases:
1. frozen: only the projection heads (and the temperature) learn. The frozen backbone's features of
   every training view are computed once (the feature cache), so an epoch costs seconds on a CPU.
2. unfrozen: the last `unfreeze_stages` backbone stages learn too (lower learning rate). The cache then
   holds the activations entering those stages, so the frozen part still runs only once.
The text transformer stays frozen; its pooled outputs are cached and its projection head learns.

Model selection: every epoch is validated in-domain (val split) and out of domain (the val rows of the
out-of-domain collections); with `selection="validation"` the best epoch - and, for the anchored head,
the best interpolation between v0 and the fine-tuned residual - is what gets saved.

Losses: symmetric InfoNCE image<->text and image<->image (or triplet), learnable temperature, in-batch
negatives plus hard negatives (known ones from judgments/clicks, mined ones: each anchor's nearest
non-positive image). AdamW, linear warm-up then cosine decay, deterministic seeds. A checkpoint after
every epoch lets an interrupted run resume where it stopped."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from imagesearch.common.images import DecodeLimits
from imagesearch.common.io import write_atomic
from imagesearch.common.progress import Progress
from imagesearch.evaluation.sets import EvalSets
from imagesearch.models.encoders import Encoder
from imagesearch.settings import TrainingSettings
from imagesearch.training.examples import index_examples, subsample_examples, without_images
from imagesearch.training.features import failed_positions, load_or_build_cache, split_backbone
from imagesearch.training.selection import IN_DOMAIN_VAL, RULES_VERSION
from imagesearch.training.trainer import Trainer
from imagesearch.training.validation import ValidationSet

CHECKPOINT = "checkpoint.pt"


EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(slots=True)
class TrainResult:
    history: list[dict[str, float]]
    selected: dict[str, float]  # the epoch (and interpolation) the model was kept at, with its metrics
    seconds: float
    cache_seconds: float
    resumed_from_epoch: int
    images: int
    rows: int
    failed: dict[str, str] = field(default_factory=dict)
    checkpoint: Path | None = None  # the last epoch's state (the kept one's parts included)
    choice_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # val score per candidate

    @property
    def final(self) -> dict[str, float]:
        """The metrics of the model as saved: the selected epoch's."""
        return self.selected or (self.history[-1] if self.history else {})


def fingerprint(
    settings: TrainingSettings, model: dict, examples_path: Path, validation: Sequence[Path] = ()
) -> str:
    """Identifies a training run's inputs: the same fingerprint may resume the same checkpoint.

    `validation`: files that define the validation rows model selection reads (the out-of-domain
    collections' manifests): a checkpoint holds the epoch selected on them, so other rows must not
    resume it; nor must a run whose selection scores other in-domain val metrics (`IN_DOMAIN_VAL`) or
    chooses by other rules (`RULES_VERSION`)."""
    digest = hashlib.blake2b(digest_size=8)
    inputs = [settings.model_dump(mode="json"), model, IN_DOMAIN_VAL, RULES_VERSION]
    digest.update(json.dumps(inputs, sort_keys=True).encode())
    digest.update(examples_path.read_bytes())
    for path in validation:
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()


def train_towers(
    encoder: Encoder,
    examples: pd.DataFrame,
    catalog: pd.DataFrame,
    settings: TrainingSettings,
    *,
    work_dir: Path,
    limits: DecodeLimits,
    on_epoch: EpochCallback | None = None,
    progress: Progress = True,
    outside: dict[str, EvalSets] | None = None,
    backbone_features: Path | None = None,
) -> TrainResult:
    """Train `encoder` (a fresh two-tower encoder) in place; resumes from `work_dir` when it can.

    `work_dir` is specific to one set of inputs (see `fingerprint`): its feature cache and checkpoint
    are reused by a re-run after an interruption. `backbone_features`: the backbone cache's folder.
    """
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    examples = subsample_examples(examples, settings.max_train_images, settings.seed)
    validation = ValidationSet.from_catalog(catalog)
    outside = outside or {}
    outside_texts = [q for sets in outside.values() for q in sets.text_qrels["query"].unique()]
    data = index_examples(examples, [*validation.texts(), *outside_texts])
    if not len(data.anchor):
        raise ValueError("no training examples: enable at least one source with data")
    stages = settings.unfreeze_stages if settings.unfrozen_epochs else 0
    trunk, top = split_backbone(encoder.image_model.backbone, stages)
    cache_seconds = time.perf_counter()
    outside_paths = {name: sets.corpus["path"].tolist() for name, sets in outside.items()}
    cache = load_or_build_cache(
        encoder,
        trunk,
        data,
        catalog,
        validation,
        settings,
        limits,
        work_dir,
        progress,
        outside_paths,
        backbone_features,
    )
    cache_seconds = time.perf_counter() - cache_seconds
    failed = failed_positions(cache, data)
    data = without_images(data, set(failed))
    validation, kept = validation.without(set(cache.failed))
    cache.val = cache.val[torch.from_numpy(kept)]
    trainer = Trainer(encoder, data, cache, validation, top, settings, outside)
    selection = trainer.selection
    history: list[dict[str, float]] = []
    start_epoch = 0
    checkpoint = work_dir / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        trainer.load(state)
        history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
    if start_epoch == 0:
        history.append({"epoch": 0, **selection.validate_and_select(0)})  # untrained: the floor to beat
        if on_epoch is not None:
            on_epoch(0, history[0])
    for epoch in range(max(start_epoch, 1), settings.frozen_epochs + settings.unfrozen_epochs + 1):
        metrics = {"epoch": epoch, **trainer.run_epoch(epoch - 1), **selection.validate_and_select(epoch)}
        history.append(metrics)
        state = trainer.state(epoch, history)
        write_atomic(checkpoint, partial(torch.save, state))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    if settings.selection == "validation":
        selected = selection.restore_best(trainer.pooled_train)
    else:  # the last epoch as trained (full residuals), whatever interpolation validation preferred
        selected = {"epoch": history[-1]["epoch"], **selection.validate(), "interpolation": 1.0}
    return TrainResult(
        history,
        selected,
        time.perf_counter() - started,
        cache_seconds,
        start_epoch,
        len(data.image_ids),
        len(data.anchor),
        dict(cache.failed),
        checkpoint,
        selection.choice_scores,
    )
