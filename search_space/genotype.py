"""The derived architecture as data, and the pure function that derives it from alpha.

Cell topology (DARTS): inputs 0 and 1 are the outputs of cells k-2 and k-1; intermediate node
j (0-based) may take any of the 2 + j earlier states (inputs, then nodes 0..j-1, as indices
2..). Edges are ordered node by node, each node's edges by input index.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from search_space.ops import OPS, PRIMITIVES, ZERO

Edge = tuple[str, int]  # (op name, input index)


def num_edges(num_nodes: int) -> int:
    """Edges of a cell with `num_nodes` intermediate nodes: 2 + 3 + ... + (num_nodes + 1)."""
    return 2 * num_nodes + num_nodes * (num_nodes - 1) // 2


def edge_index(node: int, input: int) -> int:
    """Row of alpha for the edge from state `input` into intermediate node `node`."""
    if node < 0 or not 0 <= input < 2 + node:
        raise ValueError(f"node {node} has inputs 0..{node + 1}, got input {input}")
    return num_edges(node) + input


def num_nodes_for(edges: int) -> int:
    """Inverse of num_edges; ValueError when no cell has that many edges."""
    n = 0
    while num_edges(n) < edges:
        n += 1
    if num_edges(n) != edges or n == 0:
        raise ValueError(f"{edges} edges match no cell (valid: 2, 5, 9, 14, ...)")
    return n


@dataclass(frozen=True)
class Genotype:
    """Depth K and, per intermediate node, its two kept (op_name, input_index) edges."""

    depth: int
    nodes: tuple[tuple[Edge, Edge], ...]

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"genotype depth must be an int >= 1, got {self.depth!r}")
        if not self.nodes:
            raise ValueError("genotype needs at least one intermediate node")
        for j, node in enumerate(self.nodes):
            if len(node) != 2:
                raise ValueError(f"genotype node {j} must keep exactly 2 edges, got {len(node)}")
            for op, inp in node:
                if op not in OPS:
                    raise ValueError(f"genotype node {j}: unknown op {op!r}; known: {list(OPS)}")
                if isinstance(inp, bool) or not isinstance(inp, int) or not 0 <= inp < 2 + j:
                    raise ValueError(f"genotype node {j}: input must be an int in 0..{j + 1}, got {inp!r}")
            if node[0][1] == node[1][1]:
                raise ValueError(f"genotype node {j}: its two edges share input {node[0][1]}")

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "nodes": [[[op, inp] for op, inp in node] for node in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Genotype:
        if not isinstance(d, dict) or set(d) != {"depth", "nodes"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"a genotype dict has exactly the keys depth and nodes, got {got}")
        try:
            nodes = tuple(tuple((op, inp) for op, inp in node) for node in d["nodes"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"genotype nodes must be [[[op, input], [op, input]], ...]: {e}") from None
        return cls(depth=d["depth"], nodes=nodes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> Genotype:
        return cls.from_dict(json.loads(s))

    def op_counts(self) -> dict[str, int]:
        """Kept edges per op, over one cell (all cells share the genotype)."""
        return dict(Counter(op for node in self.nodes for op, _ in node))

    def share_of(self, names: Iterable[str]) -> float:
        """Fraction of kept edges whose op is in `names` (e.g. identity and zero)."""
        wanted = set(names)
        ops = [op for node in self.nodes for op, _ in node]
        return sum(op in wanted for op in ops) / len(ops)


def derive_genotype(
    alpha: torch.Tensor,
    depth_logits: torch.Tensor,
    *,
    primitives: tuple[str, ...] = PRIMITIVES,
) -> Genotype:
    """Best non-zero op per edge, best 2 inputs per node, most likely depth. Pure.

    alpha: (E, n_ops) logits or probabilities (softmax is applied, so either ranks the same);
    depth_logits: (k_max,). Ties go to the lowest index.
    """
    if alpha.dim() != 2 or alpha.shape[1] != len(primitives):
        raise ValueError(f"alpha must be (E, {len(primitives)}), got {tuple(alpha.shape)}")
    if depth_logits.dim() != 1 or depth_logits.numel() < 1:
        raise ValueError(f"depth_logits must be (k_max,), got {tuple(depth_logits.shape)}")
    candidates = [o for o, name in enumerate(primitives) if name != ZERO]
    if not candidates:
        raise ValueError(f"primitives needs at least one op other than {ZERO!r}")
    n_nodes = num_nodes_for(alpha.shape[0])

    # Plain Python floats: exact, device-free ranking with explicit tie-breaking.
    probs = alpha.detach().double().softmax(dim=-1).cpu().tolist()  # (E, n_ops)
    best_op: list[tuple[float, int]] = []  # per edge: (weight, op index)
    for row in probs:
        o = min(candidates, key=lambda i: (-row[i], i))
        best_op.append((row[o], o))

    nodes = []
    for j in range(n_nodes):
        inputs = range(2 + j)
        ranked = sorted(inputs, key=lambda i: (-best_op[edge_index(j, i)][0], i))
        kept = sorted(ranked[:2])  # canonical order: by input index, so equal cells compare equal
        nodes.append(tuple((primitives[best_op[edge_index(j, i)][1]], i) for i in kept))

    depth_scores = depth_logits.detach().double().cpu().tolist()
    depth = min(range(len(depth_scores)), key=lambda k: (-depth_scores[k], k)) + 1
    return Genotype(depth=depth, nodes=tuple(nodes))


def sample_genotypes(
    alpha: torch.Tensor,
    depth_logits: torch.Tensor,
    *,
    count: int,
    generator: torch.Generator,
    primitives: tuple[str, ...] = PRIMITIVES,
    temperature: float = 1.0,
) -> list[Genotype]:
    """The argmax genotype, then distinct genotypes drawn from alpha and the depth logits. Pure.

    Each draw derives from the logits plus Gumbel noise times `temperature` (the Gumbel-max trick:
    at 1, each edge's op and the depth follow their softmax). Returns at most `count` genotypes,
    fewer when the distribution holds fewer distinct ones within 20 * count draws.
    """
    found = [derive_genotype(alpha, depth_logits, primitives=primitives)]
    seen = {found[0]}
    alpha, depth_logits = alpha.detach().double().cpu(), depth_logits.detach().double().cpu()
    for _ in range(20 * count):
        if len(found) >= count:
            break
        g_alpha = -torch.empty_like(alpha).exponential_(generator=generator).log()
        g_depth = -torch.empty_like(depth_logits).exponential_(generator=generator).log()
        genotype = derive_genotype(alpha + temperature * g_alpha, depth_logits + temperature * g_depth,
                                   primitives=primitives)
        if genotype not in seen:
            seen.add(genotype)
            found.append(genotype)
    return found[:count]


def random_genotype(
    *, num_nodes: int, k_max: int, generator: torch.Generator, primitives: tuple[str, ...] = PRIMITIVES
) -> Genotype:
    """A genotype drawn uniformly from the space: per node 2 distinct inputs, per edge an op other than
    zero, and a depth in 1..k_max (the random-search baseline, Li & Talwalkar 2019). Pure."""
    ops = [p for p in primitives if p != ZERO]

    def draw(n: int) -> int:
        return int(torch.randint(n, (1,), generator=generator))

    nodes = []
    for j in range(num_nodes):
        inputs = sorted(torch.randperm(2 + j, generator=generator)[:2].tolist())
        nodes.append(tuple((ops[draw(len(ops))], i) for i in inputs))
    return Genotype(depth=1 + draw(k_max), nodes=tuple(nodes))
