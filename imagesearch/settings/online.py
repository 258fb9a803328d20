"""Typed settings of the online half: the experiments the search service runs against a challenger,
and the processes `make up` keeps running. Like `stages.py`, every group is a field of `Settings`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class ExperimentSettings(BaseModel):
    """Shares of the search service's traffic (first pages only) that run an online experiment.

    Each query draws one slice: interleaved (champion and challenger merged by team draft), shadowed
    (the challenger answers too, unseen), randomized swap (two adjacent results swapped, for the
    position-bias estimate), or none. The challenger is the model of the challenger index
    (`challenger_index` asset); without one, only the swap slice runs.
    """

    interleave_share: float = Field(
        default=0.0, ge=0, le=1, description="queries shown a team-draft interleaving of both rankers"
    )
    shadow_share: float = Field(
        default=0.0, ge=0, le=1, description="queries the challenger answers too, unseen (latency, overlap)"
    )
    swap_share: float = Field(
        default=0.0, ge=0, le=1, description="randomized slice: an adjacent pair swapped, or not, by a coin"
    )
    min_swap_queries: int = Field(
        default=2000,
        ge=10,
        description="randomized-slice queries with a click before their position-bias estimate replaces "
        "training_data.propensity_eta in click_pairs",
    )

    @model_validator(mode="after")
    def _shares_fit(self) -> ExperimentSettings:
        total = self.interleave_share + self.shadow_share + self.swap_share
        if total > 1:
            raise ValueError(f"the experiment shares add up to {total:g}; at most 1")
        return self


class UpSettings(BaseModel):
    """`make up`: the Dagster webserver + daemon, the MLflow UI and the search service, supervised."""

    dagster_port: int = Field(default=3000, ge=1, le=65535)
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    stop_wait_s: int = Field(default=20, ge=1, description="how long each process may take to stop")
