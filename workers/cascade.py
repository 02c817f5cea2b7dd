"""A cascade of two students: a fast one answers the texts it is sure of and hands the rest to a slower,
better one (Viola & Jones 2001; for language models, Wang et al. 2022, "Wisdom of Committees"). Early
exit (workers/early_exit.py) stops inside one student; a cascade stops between two.

The threshold is a quantile of the fast student's confidence on a split nothing is scored on (search_valid),
so the share of texts deferred is set by the latency it may cost, not tuned on dev.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from search_space.layers import StudentOutput

Logits = Callable[..., torch.Tensor]  # (ids (B, T), mask (B, T) (, ids_b, mask_b)) -> logits (B, C)


def defer_threshold(front_probs: torch.Tensor, *, defer: float) -> float:
    """The front's top-class probability under which about a `defer` share of these rows go to the back.
    front_probs: (N, C) softmax of the front on a held-out split."""
    if not 0 <= defer <= 1:
        raise ValueError(f"defer must lie in [0, 1] (a share of the texts), got {defer}")
    if defer == 0:
        return 0.0  # no probability is below 0: nothing deferred
    return float(torch.quantile(front_probs.max(dim=-1).values.double(), defer))


def cascade_logits(front: Logits, back: Logits, *inputs: torch.Tensor | None,
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, C), deferred (B,) bool): the front's logits where its top probability reaches
    `threshold`, the back's where it does not. The back runs on the deferred rows only.
    inputs: ids (B, T), mask (B, T) (, ids_b, mask_b for pairs; None where absent)."""
    logits = front(*inputs)
    deferred = logits.softmax(dim=-1).max(dim=-1).values < threshold
    if deferred.any():
        logits = logits.clone()
        logits[deferred] = back(*(x if x is None else x[deferred] for x in inputs)).to(logits.dtype)
    return logits, deferred


class CascadeModel:
    """Two students as one: a call takes a student's inputs and returns its output (`.logits`), as the
    torch student and `OnnxStudent` do, so `StudentPredictor` serves it as it serves them."""

    def __init__(self, front, back, *, threshold: float) -> None:
        self.front, self.back, self.threshold = front, back, threshold
        self.pad_id = front.pad_id  # what a predictor pads with: both read the same ids (check_pairable)

    def __call__(self, *inputs: torch.Tensor | None) -> StudentOutput:
        logits, _ = cascade_logits(lambda *x: self.front(*x).logits, lambda *x: self.back(*x).logits, *inputs,
                                   threshold=self.threshold)
        return StudentOutput(logits=logits)
