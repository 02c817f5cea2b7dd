"""Candidate ops on an edge: 1-D over tokens, masked so padding never leaks into real tokens.

Every op maps `x: (B, T, D)` and `mask: (B, T)` (bool, int or float; 1 = real token) to
`(B, T, D)` and returns zeros at padded positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES: tuple[str, ...] = (
    "conv_3",
    "conv_5",
    "conv_7",
    "dil_conv_3",
    "dil_conv_5",
    "dil_conv_7",
    "max_pool_3",
    "avg_pool_3",
    "identity",
    "zero",
)
ZERO = "zero"  # the op a derived genotype never keeps


def _float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(dtype=like.dtype).unsqueeze(-1)  # (B, T, 1)


class Zero(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x * _float_mask(mask, x)


class Conv(nn.Module):
    """Same-padding Conv1d (D -> D) then ReLU."""

    def __init__(self, dim: int, *, kernel_size: int, dilation: int = 1) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=padding, dilation=dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _float_mask(mask, x)
        # Zero the pads first: the conv's window reaches them from real tokens.
        y = self.conv((x * m).transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        return torch.relu(y) * m


class MaxPool(nn.Module):
    def __init__(self, *, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        real = mask.to(torch.bool).unsqueeze(-1)  # (B, T, 1)
        # -inf at pads so they never win the max; a real token's window always holds itself.
        y = F.max_pool1d(
            x.masked_fill(~real, float("-inf")).transpose(1, 2),
            self.kernel_size,
            stride=1,
            padding=self.kernel_size // 2,
        ).transpose(1, 2)  # (B, T, D)
        return y.masked_fill(~real, 0.0)  # masked_fill, not a product: -inf * 0 is nan


class AvgPool(nn.Module):
    def __init__(self, *, kernel_size: int = 3) -> None:
        super().__init__()
        self.kernel_size = kernel_size

    def _window_mean(self, t: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.avg_pool1d(t.transpose(1, 2), k, stride=1, padding=k // 2).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _float_mask(mask, x)
        total = self._window_mean(x * m)  # (B, T, D) sum / k
        count = self._window_mean(m)  # (B, T, 1) real tokens / k
        # Divide by the real tokens in the window, not by k; >= 1/k at every real position.
        return total / count.clamp_min(1.0 / self.kernel_size) * m


@dataclass(frozen=True)
class OpSpec:
    """What an op is, for the analytic cost model."""

    kind: str  # "conv" | "max_pool" | "avg_pool" | "identity" | "zero"
    kernel_size: int = 0
    dilation: int = 1


OP_SPECS: dict[str, OpSpec] = {
    "conv_3": OpSpec("conv", 3),
    "conv_5": OpSpec("conv", 5),
    "conv_7": OpSpec("conv", 7),
    "dil_conv_3": OpSpec("conv", 3, dilation=2),
    "dil_conv_5": OpSpec("conv", 5, dilation=2),
    "dil_conv_7": OpSpec("conv", 7, dilation=2),
    "max_pool_3": OpSpec("max_pool", 3),
    "avg_pool_3": OpSpec("avg_pool", 3),
    "identity": OpSpec("identity"),
    "zero": OpSpec("zero"),
}


def _build(spec: OpSpec, dim: int) -> nn.Module:
    if spec.kind == "conv":
        return Conv(dim, kernel_size=spec.kernel_size, dilation=spec.dilation)
    if spec.kind == "max_pool":
        return MaxPool(kernel_size=spec.kernel_size)
    if spec.kind == "avg_pool":
        return AvgPool(kernel_size=spec.kernel_size)
    if spec.kind == "identity":
        return Identity()
    return Zero()


# name -> constructor taking the width D
OPS: dict[str, Callable[[int], nn.Module]] = {name: partial(_build, spec) for name, spec in OP_SPECS.items()}
