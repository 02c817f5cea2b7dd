"""Gumbel-softmax sampling (straight-through) and its temperature schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def gumbel_softmax(
    logits: torch.Tensor,
    *,
    tau: float,
    hard: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample over the last dim; `hard` gives an exact one-hot forward, soft gradient backward.

    Our own version rather than torch's so a `torch.Generator` (on the logits' device) makes
    samples reproducible without touching the global RNG.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    noise = torch.empty_like(logits).exponential_(generator=generator)
    # -log(Exp(1)) is Gumbel(0, 1); the clamp avoids log(0) -> inf -> nan in the softmax.
    gumbels = -noise.clamp_min(torch.finfo(logits.dtype).tiny).log()
    y_soft = ((logits + gumbels) / tau).softmax(dim=-1)
    if not hard:
        return y_soft
    index = y_soft.argmax(dim=-1, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(-1, index, 1.0)
    # y_soft - y_soft.detach() is exactly 0, so the forward value is exactly the one-hot
    # (unselected entries are exactly 0, which lets callers skip them).
    return y_hard + (y_soft - y_soft.detach())


@dataclass(frozen=True, kw_only=True)
class TemperatureSchedule:
    """Exponential decay from `start` to `end` over `total_steps`, then held at `end`."""

    start: float = 1.0
    end: float = 0.1
    total_steps: int

    def __post_init__(self) -> None:
        if self.start <= 0 or self.end <= 0:
            raise ValueError(f"temperatures must be > 0, got start={self.start}, end={self.end}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0), self.total_steps) / self.total_steps
        return float(self.start * (self.end / self.start) ** frac)
