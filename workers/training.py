"""What every trainer of the worker layer shares: gradient clipping and moving batches."""

from __future__ import annotations

import torch

GRAD_CLIP = 5.0  # max gradient norm of every student and supernet weight step (AdaBERT's setting)


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
