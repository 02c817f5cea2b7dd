"""Typed config of the cluster layer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: start a local Ray with all local CPUs and GPUs; "auto" or ray://HOST:10001: connect.
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="local Ray only; None = all")
    num_gpus: int | None = Field(None, ge=0, description="local Ray only; None = all")
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_failures: int = Field(2, ge=0, description="Tune retries of a crashed trial, from its checkpoint")
    max_concurrent_trials: int | None = Field(None, ge=1)
