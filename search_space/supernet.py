"""The supernet: every candidate op on every edge of K_max cells, sampled by Gumbel-softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search_space.config import SearchSpaceConfig
from search_space.genotype import Genotype, derive_genotype, edge_index, num_edges
from search_space.gumbel import gumbel_softmax
from search_space.layers import CellOutput, Head, PairEmbedding, Probe, masked_mean, project_embeddings
from search_space.ops import OPS, PRIMITIVES

__all__ = ["MixedOp", "SearchCell", "Supernet", "SupernetOutput", "project_embeddings"]

Active = list[list[int]]  # per edge, the op indices whose sampled weight is non-zero


def _active_ops(weights: torch.Tensor) -> Active:
    # One host transfer per forward for all edges, not one per edge.
    return [[o for o, nz in enumerate(row) if nz] for row in weights.detach().ne(0).cpu().tolist()]


class MixedOp(nn.Module):
    """Weighted sum of the candidate ops on one edge."""

    def __init__(self, dim: int, *, primitives: tuple[str, ...] = PRIMITIVES) -> None:
        super().__init__()
        self.ops = nn.ModuleList(OPS[name](dim) for name in primitives)

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
            MixedOp(space.embed_dim, primitives=space.primitives) for _ in range(num_edges(space.num_nodes))
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
    logits: torch.Tensor  # (B, C)
    cell_probe_logits: list[torch.Tensor]  # one (B, C) per active cell 1..depth
    depth: int  # sampled K
    op_weights: torch.Tensor  # (E, n_ops) sampled Gumbel weights
    op_probs: torch.Tensor  # (E, n_ops) softmax(alpha)
    depth_probs: torch.Tensor  # (k_max,) softmax(depth_logits)


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
        self.embedding = PairEmbedding(vocab_size, dim=d, pad_id=pad_id, dropout=space.dropout, init=init)
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

    def expected_depth(self) -> torch.Tensor:
        """sum_k p(k) * k, differentiable; a scalar tensor."""
        ks = torch.arange(
            1, self.space.k_max + 1, dtype=self.depth_logits.dtype, device=self.depth_logits.device
        )
        return (self.depth_logits.softmax(dim=-1) * ks).sum()

    def derive(self) -> Genotype:
        return derive_genotype(self.alpha, self.depth_logits, primitives=self.space.primitives)

    def forward(
        self,
        ids_a: torch.Tensor,
        mask_a: torch.Tensor | None,
        ids_b: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
        *,
        tau: float,
        hard: bool = True,
        generator: torch.Generator | None = None,
        depth: int | None = None,
    ) -> SupernetOutput:
        """ids/masks (B, T); a single sentence feeds both inputs of the first cell. `depth` fixes
        the number of cells instead of sampling it (no gradient reaches depth_logits then)."""
        op_weights = gumbel_softmax(self.alpha, tau=tau, hard=hard, generator=generator)  # (E, n_ops)
        if depth is None:
            depth_weights = gumbel_softmax(self.depth_logits, tau=tau, hard=hard, generator=generator)  # (k_max,)
        elif 1 <= depth <= self.space.k_max:
            depth_weights = F.one_hot(torch.tensor(depth - 1), self.space.k_max).to(self.depth_logits)
        else:
            raise ValueError(f"depth must be in 1..{self.space.k_max}, got {depth}")
        active = _active_ops(op_weights)
        # Depths with non-zero weight: exactly one when hard; all of them when soft.
        depths = [k + 1 for k, nz in enumerate(depth_weights.detach().ne(0).cpu().tolist()) if nz]
        depth = int(depth_weights.detach().argmax().item()) + 1

        s0, s1, mask = self.embedding(ids_a, mask_a, ids_b, mask_b)  # (B, T, D) x2, (B, T)
        outputs = []
        for cell in self.cells[: max(depths)]:
            s0, s1 = s1, cell(s0, s1, mask, op_weights, active=active)
            outputs.append(s1)
        pooled = torch.stack([masked_mean(h, mask) for h in outputs], dim=1)  # (B, K, D)
        # GDAS-style: the head on the first K cells times weight[K-1] (exactly 1 forward when
        # hard) carries the task loss's gradient to depth_logits.
        logits = sum(depth_weights[k - 1] * self.head(pooled[:, :k]) for k in depths)
        probes = [probe(h, mask) for probe, h in zip(self.probes[:depth], outputs[:depth], strict=True)]
        return SupernetOutput(
            logits=logits,
            cell_probe_logits=probes,
            depth=depth,
            op_weights=op_weights,
            op_probs=self.alpha.softmax(dim=-1),
            depth_probs=self.depth_logits.softmax(dim=-1),
        )

    def path_parameter_count(self, genotype: Genotype, *, with_probes: bool = True) -> int:
        """Parameters on the genotype's path through this supernet: what its Student holds."""
        if genotype.num_nodes != self.space.num_nodes or genotype.depth > self.space.k_max:
            raise ValueError(
                f"genotype ({genotype.num_nodes} nodes, depth {genotype.depth}) does not fit the space "
                f"({self.space.num_nodes} nodes, k_max {self.space.k_max})"
            )

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        total = count(self.embedding) + count(self.head)
        for k in range(genotype.depth):
            cell = self.cells[k]
            total += count(cell.output)
            for j, node in enumerate(genotype.nodes):
                for op, i in node:
                    total += count(cell.edges[edge_index(j, i)].ops[self.space.primitives.index(op)])
            if with_probes:
                total += count(self.probes[k])
        return total
