"""Per-op latency on the caller's device, for the latency-based cost vector.

Writing the table to disk and the CLI around it live elsewhere; this only measures.
"""

from __future__ import annotations

import statistics
import time

import torch

from search_space.config import SearchSpaceConfig
from search_space.ops import OPS


def _synchronize(device: torch.device) -> None:
    # Accelerators run asynchronously: wait for the op to finish before reading the clock.
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


@torch.no_grad()
def measure_op_latency(
    space: SearchSpaceConfig,
    *,
    seq_len: int,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    repeats: int = 30,
    warmup: int = 5,
) -> dict[str, float]:
    """Median milliseconds per call of each op in `space.primitives`, at width embed_dim."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    device = torch.device(device)
    # Measuring must not shift the caller's global RNG stream (op init draws from it).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ops = {name: OPS[name](space.embed_dim).to(device).eval() for name in space.primitives}
        x = torch.randn(batch_size, seq_len, space.embed_dim).to(device)  # (B, T, D)
    mask = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)  # (B, T)

    table = {}
    for name, op in ops.items():
        for _ in range(warmup):
            op(x, mask)
        _synchronize(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            op(x, mask)
            _synchronize(device)
            times.append(time.perf_counter() - start)
        table[name] = 1000.0 * statistics.median(times)
    return table
