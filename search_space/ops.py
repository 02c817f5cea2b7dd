"""Candidate ops on an edge: 1-D over tokens, masked so padding never leaks into real tokens.

Every op maps `x: (B, T, D)` and `mask: (B, T)` (bool, int or float; 1 = real token) to
`(B, T, D)` and returns zeros at padded positions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

# The plain data lives torch-free in primitives.py; re-exported here for existing imports.
from search_space.primitives import OP_SPECS, PRIMITIVES, ZERO, OpSpec  # noqa: F401


def _float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(dtype=like.dtype).unsqueeze(-1)  # (B, T, 1)


def _on_one_scale(y: torch.Tensor, mask: torch.Tensor, *, norm: bool) -> torch.Tensor:
    """A per-token LayerNorm without affine (DARTS puts BN without affine after every op): every
    op's output then has the same scale, so the search compares what ops compute rather than how
    large their outputs are. Pads stay zero."""
    if norm:
        y = F.layer_norm(y, y.shape[-1:])
    return y * _float_mask(mask, y)


class Zero(nn.Module):
    def __init__(self, *, norm: bool = True) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class Identity(nn.Module):
    def __init__(self, *, norm: bool = True) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _on_one_scale(x, mask, norm=self.norm)


class Conv(nn.Module):
    """ReLU, then a same-padding Conv1d (D -> D), then the shared per-token norm (ReLU-Conv-BN as in
    DARTS; without `norm`: Conv1d then ReLU).

    `kernel`: a wider Conv1d of the same dilation whose centre `kernel_size` taps this op uses,
    so the ops of one family share one super-kernel (Single-Path NAS) and each trains whenever any
    of them is sampled. A standalone op owns its own Conv1d.
    """

    def __init__(self, dim: int, *, kernel_size: int, dilation: int = 1, norm: bool = True,
                 kernel: nn.Conv1d | None = None) -> None:
        super().__init__()
        self.kernel_size, self.dilation, self.norm = kernel_size, dilation, norm
        self.padding = dilation * (kernel_size - 1) // 2
        if kernel is None:
            self.conv = nn.Conv1d(dim, dim, kernel_size, padding=self.padding, dilation=dilation)
            self._shared: tuple[nn.Conv1d, ...] = ()
        else:
            if kernel.dilation[0] != dilation or kernel.kernel_size[0] < kernel_size:
                raise ValueError(f"a super-kernel of width {kernel.kernel_size[0]}, dilation {kernel.dilation[0]} "
                                 f"cannot serve a width-{kernel_size}, dilation-{dilation} conv")
            self._shared = (kernel,)  # a tuple: the owner (the edge) registers the kernel, not each op

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, D, kernel_size) weight and (D,) bias: this op's own, or the super-kernel's centre taps."""
        if not self._shared:
            return self.conv.weight, self.conv.bias
        kernel = self._shared[0]
        start = (kernel.kernel_size[0] - self.kernel_size) // 2
        return kernel.weight[:, :, start:start + self.kernel_size], kernel.bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _float_mask(mask, x)
        weight, bias = self.weight_and_bias()
        # Zero the pads first: the conv's window reaches them from real tokens.
        h = (torch.relu(x) if self.norm else x) * m
        y = conv_tokens(h, weight, bias, dilation=self.dilation)
        return _on_one_scale(y, mask, norm=True) if self.norm else torch.relu(y) * m  # (B, T, D)


def conv_tokens(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, dilation: int) -> torch.Tensor:
    """A same-padded Conv1d over tokens: x (B, T, D_in), weight (D_out, D_in, k) -> (B, T, D_out).

    A dilated conv runs as one matmul: the k shifted copies of x side by side times the unrolled
    kernel. On CPU torch sends a dilated Conv1d to its slow reference kernel; at batch 1 (length 64,
    width 128, one thread) the matmul took 0.13 ms against 0.33 ms for dil_conv_3 and 0.48 against
    1.13 ms for dil_conv_7, and tied at batch 128. An undilated Conv1d has a fast kernel (0.08 ms
    against the matmul's 0.13 ms for conv_3), so it keeps it."""
    k = weight.shape[-1]
    pad = dilation * (k - 1) // 2
    if dilation == 1:
        return F.conv1d(x.transpose(1, 2), weight, bias, padding=pad).transpose(1, 2)
    batch, length, _ = x.shape
    padded = F.pad(x, (0, 0, pad, pad))  # (B, T + 2 pad, D_in)
    taps = torch.cat([padded[:, i * dilation:i * dilation + length] for i in range(k)], dim=-1)  # (B, T, k D_in)
    unrolled = weight.permute(2, 1, 0).reshape(-1, weight.shape[0])  # (k D_in, D_out), tap-major like taps
    return torch.addmm(bias, taps.reshape(batch * length, -1), unrolled).view(batch, length, -1)


class MaxPool(nn.Module):
    def __init__(self, *, kernel_size: int = 3, norm: bool = True) -> None:
        super().__init__()
        self.kernel_size, self.norm = kernel_size, norm

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        real = mask.to(torch.bool).unsqueeze(-1)  # (B, T, 1)
        length, half = x.shape[1], self.kernel_size // 2
        # -inf at pads so they never win the max; a real token's window always holds itself. The max over
        # shifted slices rather than F.max_pool1d: that one pins the length when exported to ONNX.
        padded = F.pad(x.masked_fill(~real, float("-inf")), (0, 0, half, half), value=float("-inf"))  # (B, T+2h, D)
        y = functools.reduce(torch.maximum, (padded[:, i:i + length] for i in range(self.kernel_size)))  # (B, T, D)
        y = y.masked_fill(~real, 0.0)  # masked_fill, not a product: -inf * 0 is nan
        return _on_one_scale(y, mask, norm=self.norm)


class AvgPool(nn.Module):
    def __init__(self, *, kernel_size: int = 3, norm: bool = True) -> None:
        super().__init__()
        self.kernel_size, self.norm = kernel_size, norm

    def _window_mean(self, t: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.avg_pool1d(t.transpose(1, 2), k, stride=1, padding=k // 2).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _float_mask(mask, x)
        total = self._window_mean(x * m)  # (B, T, D) sum / k
        count = self._window_mean(m)  # (B, T, 1) real tokens / k
        # Divide by the real tokens in the window, not by k; >= 1/k at every real position.
        return _on_one_scale(total / count.clamp_min(1.0 / self.kernel_size), mask, norm=self.norm)


def build_op(name: str, dim: int, *, norm: bool = True, kernel: nn.Conv1d | None = None) -> nn.Module:
    """The op `name` at width `dim`; `kernel` (convs only) is the family's super-kernel to slice."""
    spec = OP_SPECS[name]
    if spec.kind == "conv":
        return Conv(dim, kernel_size=spec.kernel_size, dilation=spec.dilation, norm=norm, kernel=kernel)
    if kernel is not None:
        raise ValueError(f"{name} has no kernel to share")
    if spec.kind == "max_pool":
        return MaxPool(kernel_size=spec.kernel_size, norm=norm)
    if spec.kind == "avg_pool":
        return AvgPool(kernel_size=spec.kernel_size, norm=norm)
    if spec.kind == "identity":
        return Identity(norm=norm)
    return Zero()


def conv_families(primitives: tuple[str, ...]) -> dict[int, list[str]]:
    """The conv ops of `primitives` grouped by dilation: the ops one super-kernel can serve."""
    families: dict[int, list[str]] = {}
    for name in primitives:
        if OP_SPECS[name].kind == "conv":
            families.setdefault(OP_SPECS[name].dilation, []).append(name)
    return families


# name -> constructor taking the width D (ops on one scale, each conv with its own kernel)
OPS: dict[str, Callable[[int], nn.Module]] = {name: partial(build_op, name) for name in OP_SPECS}
