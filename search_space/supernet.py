"""The supernet: every candidate op on every edge of K_max cells, and a head on every depth.

Ops are sampled per edge (hard Gumbel-softmax over alpha, or given as weights: a uniform path,
a genotype's path). The depth is not sampled: the cells run in sequence anyway, so the head
reads the first k cells for every k at once, and the caller weighs the K_max losses (every
depth trains every step; the depth distribution compares the depths' actual losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from search_space.config import SearchSpaceConfig
from search_space.genotype import Genotype, derive_genotype, edge_index, num_edges
from search_space.gumbel import gumbel_softmax
from search_space.layers import CellOutput, Head, PairEmbedding, Probe, masked_pool, project_embeddings
from search_space.ops import OP_SPECS, PRIMITIVES, build_op, conv_families

__all__ = ["MixedOp", "SearchCell", "Supernet", "SupernetOutput", "project_embeddings"]

Active = list[list[int]]  # per edge, the op indices whose weight is non-zero


def active_ops(weights: torch.Tensor) -> Active:
    # One host transfer per forward for all edges, not one per edge.
    return [[o for o, nz in enumerate(row) if nz] for row in weights.detach().ne(0).cpu().tolist()]


class MixedOp(nn.Module):
    """Weighted sum of the candidate ops on one edge; with `shared_kernels`, the convs of one
    dilation slice one super-kernel of the family's widest width."""

    def __init__(self, dim: int, *, primitives: tuple[str, ...] = PRIMITIVES, norm: bool = True,
                 shared_kernels: bool = True) -> None:
        super().__init__()
        self.kernels = nn.ModuleDict()
        if shared_kernels:
            for dilation, names in conv_families(primitives).items():
                width = max(OP_SPECS[n].kernel_size for n in names)
                self.kernels[str(dilation)] = nn.Conv1d(dim, dim, width, dilation=dilation)
        self.ops = nn.ModuleList(
            build_op(name, dim, norm=norm, kernel=self.kernels[str(OP_SPECS[name].dilation)]
                     if shared_kernels and OP_SPECS[name].kind == "conv" else None)
            for name in primitives
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, *, active: list[int] | None = None
    ) -> torch.Tensor:
        """x (B, T, D), weights (n_ops,). Only ops in `active` (default: non-zero weight) run;
        each is still multiplied by its weight so the straight-through gradient reaches alpha."""
        if active is None:
            active = [o for o, nz in enumerate(weights.detach().ne(0).tolist()) if nz]
        out = torch.zeros_like(x)
        for o in active:
            out = out + weights[o] * self.ops[o](x, mask)
        return out


class SearchCell(nn.Module):
    """Two inputs, `num_nodes` intermediate nodes summing MixedOp edges, attention output."""

    def __init__(self, space: SearchSpaceConfig) -> None:
        super().__init__()
        self.num_nodes = space.num_nodes
        self.edges = nn.ModuleList(
            MixedOp(space.embed_dim, primitives=space.primitives, norm=space.op_norm,
                    shared_kernels=space.shared_kernels)
            for _ in range(num_edges(space.num_nodes))
        )
        self.output = CellOutput(space.embed_dim)

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        mask: torch.Tensor,
        weights: torch.Tensor,
        *,
        active: Active | None = None,
    ) -> torch.Tensor:
        """s0, s1 (B, T, D): outputs of cells k-2, k-1; weights (E, n_ops) -> (B, T, D)."""
        states = [s0, s1]
        for j in range(self.num_nodes):
            node = 0
            for i in range(2 + j):
                e = edge_index(j, i)
                node = node + self.edges[e](
                    states[i], mask, weights[e], active=None if active is None else active[e]
                )
            states.append(node)
        return self.output(states[2:], mask)


@dataclass
class SupernetOutput:
    logits_by_depth: torch.Tensor  # (depth, B, C): the head on the first k cells, k = 1..depth
    cell_probe_logits: list[torch.Tensor]  # one (B, C) per cell 1..depth
    op_weights: torch.Tensor  # (E, n_ops) the path's op weights (sampled or given)
    op_probs: torch.Tensor  # (E, n_ops) softmax(alpha)
    depth_probs: torch.Tensor  # (k_max,) softmax(depth_logits)

    @property
    def depth(self) -> int:
        return int(self.logits_by_depth.shape[0])


class Supernet(nn.Module):
    """Embedding, K_max search cells sharing one alpha, per-cell probes, attention head."""

    def __init__(
        self,
        space: SearchSpaceConfig,
        *,
        vocab_size: int,
        num_labels: int,
        teacher_hidden: int | None = None,
        embedding_init: torch.Tensor | None = None,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.space = space
        self.vocab_size, self.num_labels, self.pad_id = vocab_size, num_labels, pad_id
        self.teacher_hidden = teacher_hidden  # provenance only: the table is stored at width d
        init = None
        if embedding_init is not None:
            if embedding_init.dim() != 2 or embedding_init.shape[0] != vocab_size:
                raise ValueError(
                    f"embedding_init must be ({vocab_size}, H), got {tuple(embedding_init.shape)}"
                )
            if teacher_hidden is not None and embedding_init.shape[1] != teacher_hidden:
                raise ValueError(
                    f"embedding_init has width {embedding_init.shape[1]}, teacher_hidden is {teacher_hidden}"
                )
            init = project_embeddings(embedding_init, space.embed_dim)
        d = space.embed_dim
        self.embedding = PairEmbedding(vocab_size, dim=d, pad_id=pad_id, dropout=space.dropout, init=init,
                                       rank=space.embedding_rank, kronecker=space.embedding_kronecker)
        self.cells = nn.ModuleList(SearchCell(space) for _ in range(space.k_max))
        self.probes = nn.ModuleList(Probe(d, num_labels=num_labels) for _ in range(space.k_max))
        self.head = Head(d, num_labels=num_labels, dropout=space.dropout)
        # Small random alpha (as DARTS) so no op starts favoured; uniform prior over depth.
        self.alpha = nn.Parameter(1e-3 * torch.randn(num_edges(space.num_nodes), len(space.primitives)))
        self.depth_logits = nn.Parameter(torch.zeros(space.k_max))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.depth_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def derive(self) -> Genotype:
        return derive_genotype(self.alpha, self.depth_logits, primitives=self.space.primitives)

    def forward(
        self,
        ids_a: torch.Tensor,
        mask_a: torch.Tensor | None,
        ids_b: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
        *,
        tau: float = 1.0,
        hard: bool = True,
        generator: torch.Generator | None = None,
        op_weights: torch.Tensor | None = None,
        depth: int | None = None,
    ) -> SupernetOutput:
        """ids/masks (B, T); a single sentence feeds both inputs of the first cell.

        `op_weights` (E, n_ops) fixes the path instead of sampling it from alpha (then no gradient
        reaches alpha); `depth` runs only the first `depth` cells (default: all K_max).
        """
        depth = self.space.k_max if depth is None else depth
        if not 1 <= depth <= self.space.k_max:
            raise ValueError(f"depth must be in 1..{self.space.k_max}, got {depth}")
        if op_weights is None:
            op_weights = gumbel_softmax(self.alpha, tau=tau, hard=hard, generator=generator)  # (E, n_ops)
        elif op_weights.shape != self.alpha.shape:
            raise ValueError(f"op_weights must be {tuple(self.alpha.shape)}, got {tuple(op_weights.shape)}")
        active = active_ops(op_weights)

        s0, s1, mask = self.embedding(ids_a, mask_a, ids_b, mask_b)  # (B, T, D) x2, (B, T)
        outputs = []
        for cell in self.cells[:depth]:
            s0, s1 = s1, cell(s0, s1, mask, op_weights, active=active)
            outputs.append(s1)
        pooled = torch.stack([masked_pool(h, mask, how=self.space.pool) for h in outputs], dim=1)  # (B, K, D)
        logits = torch.stack([self.head(pooled[:, :k]) for k in range(1, depth + 1)])  # (K, B, C)
        probes = [probe(pooled[:, k]) for k, probe in enumerate(self.probes[:depth])]
        return SupernetOutput(
            logits_by_depth=logits,
            cell_probe_logits=probes,
            op_weights=op_weights,
            op_probs=self.alpha.softmax(dim=-1),
            depth_probs=self.depth_logits.softmax(dim=-1),
        )


def genotype_weights(genotype: Genotype, *, primitives: tuple[str, ...]) -> torch.Tensor:
    """(E, n_ops) one-hot rows on the genotype's kept edges, zero rows on dropped edges."""
    weights = torch.zeros(num_edges(genotype.num_nodes), len(primitives))
    for j, node in enumerate(genotype.nodes):
        for op, i in node:
            weights[edge_index(j, i), primitives.index(op)] = 1.0
    return weights


def uniform_path(num_edges_: int, num_ops: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(E, n_ops) one-hot rows, each op drawn uniformly: a single path of the supernet (SPOS)."""
    index = torch.randint(num_ops, (num_edges_,), generator=generator, device=device)
    return torch.nn.functional.one_hot(index, num_ops).float()


@torch.no_grad()
def inherit_weights(supernet: Supernet, student: nn.Module, genotype: Genotype) -> None:
    """Copy the supernet's trained weights along the genotype's path into a Student built from it:
    embedding, head, probes, each cell's output and, per kept edge, the op's kernel (the centre
    taps of a shared super-kernel)."""
    student.embedding.load_state_dict(supernet.embedding.state_dict())
    student.head.load_state_dict(supernet.head.state_dict())
    for k in range(genotype.depth):
        source, target = supernet.cells[k], student.cells[k]
        target.output.load_state_dict(source.output.state_dict())
        for j, node in enumerate(genotype.nodes):
            for slot, (op, i) in enumerate(node):
                mixed = source.edges[edge_index(j, i)].ops[supernet.space.primitives.index(op)]
                kept = target.nodes[j][slot]
                if OP_SPECS[op].kind == "conv":
                    weight, bias = mixed.weight_and_bias()
                    kept.conv.weight.copy_(weight)
                    kept.conv.bias.copy_(bias)
        if getattr(student, "with_probes", False):
            student.probes[k].load_state_dict(supernet.probes[k].state_dict())
