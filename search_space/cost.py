"""The cost model: analytic per-op params and FLOPs, normalised cost vectors, L_E.

FLOPs count one multiply-add as 2 and other element-wise work as 1, per example (batch 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from search_space.config import SearchSpaceConfig
from search_space.genotype import Genotype
from search_space.layers import kronecker_shapes
from search_space.ops import OP_SPECS


@dataclass(frozen=True)
class OpCost:
    params: int
    flops: float


def op_costs(*, primitives: tuple[str, ...], dim: int, seq_len: int) -> dict[str, OpCost]:
    """Per-op cost of one edge at width `dim` over `seq_len` tokens, in `primitives` order."""
    costs = {}
    for name in primitives:
        spec = OP_SPECS[name]
        if spec.kind == "conv":  # weight + bias; one MAC per (in, out, tap, token)
            params, flops = dim * dim * spec.kernel_size + dim, 2.0 * dim * dim * spec.kernel_size * seq_len
        elif spec.kind in ("max_pool", "avg_pool"):
            params, flops = 0, float(spec.kernel_size * dim * seq_len)
        else:  # identity, zero
            params, flops = 0, 0.0
        costs[name] = OpCost(params=params, flops=flops)
    return costs


def _normalise(values: list[float], *, by: float) -> torch.Tensor:
    vec = torch.tensor(values, dtype=torch.float32)
    return vec / by if by > 0 else torch.zeros_like(vec)


def normalised_cost_vector(
    costs: Mapping[str, OpCost],
    *,
    reference: OpCost | None = None,
    kept_edges: int = 1,
    source: Literal["params_flops", "latency"] = "params_flops",
    latency_table: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """(n_ops,) op costs, in the order of `costs` (= the primitives order).

    With `reference` (the teacher's cost), params_flops: each op's params and FLOPs as a share of the
    teacher's, averaged and times `kept_edges` (K_max * edges kept per cell), so that `efficiency_loss` is
    about the derived student's cell ops as a share of the teacher: a conv edge costs under 1%, as flat as
    AdaBERT's op costs (0.094-0.108). Max-normalised costs (1 for conv_7, 0 for free ops) derived a
    parameter-free cell at every beta measured (0.5, 2, 8); on this scale beta 0.05 kept 3 convs, 0.1 one,
    0.25 none (rotten_tomatoes). latency with `reference`: the table's shape, scaled so that its costliest op
    costs what the costliest op costs in params_flops, so that beta means the same with either source.
    Without `reference` (no teacher at hand): each measure over its max op, in [0, 1].
    """
    params = [float(c.params) for c in costs.values()]
    flops = [c.flops for c in costs.values()]
    if reference is None:
        params_flops = (_normalise(params, by=max(params)) + _normalise(flops, by=max(flops))) / 2
    else:
        params_flops = (_normalise(params, by=reference.params) + _normalise(flops, by=reference.flops)) / 2 * kept_edges
    if source == "params_flops":
        return params_flops
    if source == "latency":
        if latency_table is None:
            raise ValueError("source='latency' needs a latency_table")
        missing = [name for name in costs if name not in latency_table]
        if missing:
            raise ValueError(f"latency_table has no entry for ops {missing}")
        values = [float(latency_table[name]) for name in costs]
        scale = 1.0 if reference is None else float(params_flops.max())
        return _normalise(values, by=max(values)) * scale
    raise ValueError(f"source must be 'params_flops' or 'latency', got {source!r}")


def _expected_k(depth_probs: torch.Tensor) -> torch.Tensor:
    ks = torch.arange(1, depth_probs.shape[-1] + 1, dtype=depth_probs.dtype, device=depth_probs.device)
    return (depth_probs * ks).sum()


def efficiency_loss(
    op_probs: torch.Tensor, depth_probs: torch.Tensor, cost_vec: torch.Tensor
) -> torch.Tensor:
    """L_E = (E[K] / K_max) * mean over edges of sum_o p(o) * cost(o); a differentiable scalar.

    op_probs (E, n_ops), depth_probs (k_max,), cost_vec (n_ops,).
    """
    cost_vec = cost_vec.to(dtype=op_probs.dtype, device=op_probs.device)
    per_edge = op_probs @ cost_vec  # (E,)
    return _expected_k(depth_probs) / depth_probs.shape[-1] * per_edge.mean()


def _expected(op_probs: torch.Tensor, depth_probs: torch.Tensor, values: list[float]) -> float:
    if op_probs.shape[-1] != len(values):
        raise ValueError(f"op_probs has {op_probs.shape[-1]} ops, costs {len(values)}")
    vec = torch.tensor(values, dtype=torch.float64)
    per_cell = (op_probs.detach().double().cpu() @ vec).sum()  # all edges of one cell
    return float(_expected_k(depth_probs.detach().double().cpu()) * per_cell)


def expected_params(op_probs: torch.Tensor, depth_probs: torch.Tensor, costs: Mapping[str, OpCost]) -> float:
    """Expected op parameters of the supernet: sum over edges of E_p[params] times E[K]."""
    return _expected(op_probs, depth_probs, [float(c.params) for c in costs.values()])


def expected_flops(op_probs: torch.Tensor, depth_probs: torch.Tensor, costs: Mapping[str, OpCost]) -> float:
    """Expected op FLOPs of the supernet: sum over edges of E_p[flops] times E[K]."""
    return _expected(op_probs, depth_probs, [c.flops for c in costs.values()])


def genotype_params_flops(
    genotype: Genotype,
    *,
    space: SearchSpaceConfig,
    seq_len: int,
    vocab_size: int,
    num_labels: int,
    with_probes: bool = True,
) -> tuple[int, float]:
    """Analytic (params, FLOPs per example) of the Student built from `genotype`.

    Params match `Student(genotype, ..., with_probes=with_probes)` exactly.
    """
    d, t, c, k = space.embed_dim, seq_len, num_labels, genotype.depth
    costs = op_costs(primitives=tuple(OP_SPECS), dim=d, seq_len=t)
    kept = [op for node in genotype.nodes for op, _ in node]
    n = genotype.num_nodes

    cell_params = sum(costs[op].params for op in kept) + (d + 1) + 2 * d  # ops, node scorer, LayerNorm
    node_flops = n * d * t  # one add per node (two inputs)
    attention_flops = n * d * t + 2 * n * d + 2 * n * d * t  # mean-pool, score, weighted sum
    norm_flops = 8 * d * t  # LayerNorm and re-masking
    cell_flops = sum(costs[op].flops for op in kept) + node_flops + attention_flops + norm_flops
    probe_params = d * c + c if with_probes else 0
    probe_flops = d * t + d + 2 * d * c if with_probes else 0  # pool, tanh, linear
    head_params = (d + 1) + (d * d + d) + (d * c + c)  # cell scorer, dense, classifier
    head_flops = k * d * t + 4 * k * d + 2 * d * d + d + 2 * d * c  # pool, attend, dense, tanh, classify

    r, kron = space.embedding_rank, space.embedding_kronecker
    embedding_params = vocab_size * d if r is None else vocab_size * r + r * d
    embedding_flops = 0 if r is None else 2 * r * d * t  # the low-rank map, per token
    if kron is not None:
        v1, v2, d1, d2 = kronecker_shapes(vocab_size, d)
        embedding_params, embedding_flops = kron * (v1 * d1 + v2 * d2), 2 * kron * d * t  # products and sums
    params = embedding_params + k * (cell_params + probe_params) + head_params
    flops = embedding_flops + k * (cell_flops + probe_flops) + head_flops
    return params, float(flops)
