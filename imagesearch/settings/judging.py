"""Typed settings of the stages that judge models: offline evaluation and promotion, embedding drift,
and the ablation. Like `stages.py`, every group is a field of `Settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# how an online guardrail's loss is judged (imagesearch/evaluation/promotion.py::GuardTest)
GuardTestKind = Literal["point", "harm", "non_inferiority"]

OOD_COLLECTIONS = ("fashion-mnist", "gcompris")
QUERY_KINDS = ("image_to_image", "text_to_image")


class EvaluationSettings(BaseModel):
    """Held-out evaluation on the test split and the promotion rule it feeds."""

    max_image_queries: int = Field(default=500, ge=1, description="test images used as image queries")
    tag_max_share: float = Field(
        default=0.3, gt=0, le=1, description="tags on more test images than this share are not queries"
    )
    primary_metric: str = Field(
        default="text_to_image.ndcg_at_10", description="<query type>.<metric> the challenger must improve"
    )
    promotion_margin: float = Field(
        default=0.005, ge=-1, description="absolute gain needed on the primary (negative: a loss allowed)"
    )
    guarded_metrics: list[str] = Field(
        default=[
            "image_to_image.ndcg_at_10",
            "text_to_image.recall_at_10",
            *(f"{name}:{kind}.ndcg_at_10" for name in OOD_COLLECTIONS for kind in QUERY_KINDS),
        ],
        description="metrics that may not regress by more than guard_tolerance "
        "('<collection>:<query type>.<metric>' for an out-of-domain collection)",
    )
    guard_tolerance: float = Field(default=0.01, ge=0)
    ood_collections: list[str] = Field(
        default=list(OOD_COLLECTIONS),
        description="out-of-domain collections evaluated next to the test split (test rows) and used "
        "for model selection in training (val rows); never trained on",
    )
    index_recall_floor: float = Field(
        default=0.8, ge=0, le=1, description="served index recall@10 against exact search, at least"
    )
    online_stage: bool = Field(
        default=True,
        description="after the offline gate, promote only on the interleaving experiment's evidence "
        "(online_experiment); false: the offline gate alone decides",
    )
    online_min_queries: int = Field(
        default=250,
        ge=1,
        description="online stage: interleaved queries with a winner before deciding (250 reached 80% "
        "power in the simulation, README: Online evaluation)",
    )
    online_require_win: bool = Field(
        default=False, description="online stage: a significant win (true) or no significant loss (false)"
    )
    online_guard_tolerance: float = Field(
        default=0.02, ge=0, description="online guardrails: CTR may trail / abandonment exceed by this much"
    )
    online_guard_test: GuardTestKind = Field(
        default="harm",
        description="online guardrails: 'harm' stops a promotion (or rolls one back) when a one-sided "
        "test shows a loss past the tolerance; 'non_inferiority' unless it rules such a loss out; "
        "'point' when the point estimate is past it (noise of the tolerance's size flips it)",
    )
    online_guard_alpha: float = Field(
        default=0.05, gt=0, lt=0.5, description="online guardrails: the one-sided tests' level"
    )


class DriftSettings(BaseModel):
    """Embedding drift: recent images and queries against the reference (asset embedding_drift)."""

    recent_images: int = Field(
        default=500, ge=10, description="the newest images tested (the live delta's, when it has more)"
    )
    recent_queries: int = Field(
        default=500, ge=10, description="the latest logged text queries, against the ones before them"
    )
    max_rows: int = Field(default=5000, ge=100, description="rows per side the classifier sees at most")
    threshold: float = Field(
        default=0.75, gt=0.5, le=1, description="ROC AUC above which the drift check warns"
    )
    retrain: bool = Field(
        default=False, description="let drift_sensor request a retraining run when the check warns"
    )


class AblationSettings(BaseModel):
    """The reduced training budget of the ablation (one model per training-data source, and all)."""

    variants: list[str] = Field(
        default=[
            "two_tower (round one)",
            "two_tower + raw features",
            "anchored, no raw features",
            "anchored, last epoch, full residual",
            "anchored, v0's bridge (top 10, T 1)",
            "anchored, bridge chosen, no training",
            "anchored, text tower locked (LiT)",
            "anchored, plain raw block",
            "anchored, residual over the class mix",
            "anchored, zero-shot distillation (ZSCL)",
            "anchored, fine-tuned residual (the default before)",
            "anchored + collection-routed specialist (default)",
        ],
        description="a recipe of imagesearch.evaluation.ablation.RECIPES, a source name, or 'all'",
    )
    max_train_images: int = Field(
        default=1500, ge=2, description="train images per variant (the same budget)"
    )
    frozen_epochs: int = Field(default=6, ge=1)
    unfrozen_epochs: int = Field(default=0, ge=0)
