"""The search space's plain data, torch-free: the primitive names and what each op is.

search_space/ops.py builds the torch modules from these and re-exports them; code that only needs
names (configs, the CLI) imports them from here without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

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
