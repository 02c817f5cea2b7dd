"""What every trainer of the worker layer shares: the optimiser, gradient clipping and moving batches."""

from __future__ import annotations

import torch

GRAD_CLIP = 5.0  # max gradient norm of every student and supernet weight step (AdaBERT's setting)


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def adamw(params, *, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with its fused kernel: on CPU torch otherwise loops over the tensors one op at a time, and a
    step over a student's 4M parameters took 27 ms against 3.5 ms fused (the teacher's 22M: 148 against
    15 ms; one thread, AMD EPYC), a fifth of a cell's retrain step. Same update, same determinism."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
