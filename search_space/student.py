"""The derived student: the supernet's design with only the genotype's ops and depth."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from search_space.config import SearchSpaceConfig
from search_space.genotype import Genotype
from search_space.layers import CellOutput, KroneckerTable, PairEmbedding, ProbedStack, State
from search_space.ops import build_op


class StudentCell(nn.Module):
    """A cell whose nodes each sum their two kept edges."""

    def __init__(self, genotype: Genotype, *, dim: int, norm: bool = True) -> None:
        super().__init__()
        self.inputs = [[i for _, i in node] for node in genotype.nodes]
        self.nodes = nn.ModuleList(
            nn.ModuleList(build_op(op, dim, norm=norm) for op, _ in node) for node in genotype.nodes
        )
        self.output = CellOutput(dim)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = [s0, s1]  # (B, T, D) each
        for ops, inputs in zip(self.nodes, self.inputs, strict=True):
            states.append(sum(op(states[i], mask) for op, i in zip(ops, inputs, strict=True)))
        return self.output(states[2:], mask)


class Student(ProbedStack):
    """A stack of `genotype.depth` copies of the searched cell over a width-`embed_dim` token table."""

    def __init__(
        self,
        genotype: Genotype,
        *,
        space: SearchSpaceConfig,
        vocab_size: int,
        num_labels: int,
        pad_id: int = 0,
        with_probes: bool = True,
        embedding_init: torch.Tensor | None = None,
        embedding_rows: int | None = None,
    ) -> None:
        """`embedding_init`: an already projected `(vocab_size, embed_dim)` table (e.g. from
        `project_embeddings`); weights are not part of `config_dict`. `embedding_rows`: a
        task-vocabulary table of that many rows (see `keep_vocabulary`)."""
        if genotype.num_nodes != space.num_nodes:
            raise ValueError(f"genotype has {genotype.num_nodes} nodes, the space {space.num_nodes}")
        foreign = sorted({op for node in genotype.nodes for op, _ in node} - set(space.primitives))
        if foreign:
            raise ValueError(f"genotype uses ops {foreign} outside the space's primitives")
        super().__init__(vocab_size=vocab_size, num_labels=num_labels, pad_id=pad_id, with_probes=with_probes,
                         embedding_rows=embedding_rows)
        self.genotype, self.space = genotype, space
        d = space.embed_dim
        self.embedding = PairEmbedding(
            vocab_size, dim=d, pad_id=pad_id, dropout=space.dropout, init=embedding_init, rows=embedding_rows,
            rank=space.embedding_rank, kronecker=space.embedding_kronecker,
        )
        self.cells = nn.ModuleList(StudentCell(genotype, dim=d, norm=space.op_norm) for _ in range(genotype.depth))
        self.add_readout(dim=d, depth=genotype.depth, dropout=space.dropout, pool=space.pool)

    def embed(self, ids_a: torch.Tensor, mask_a: torch.Tensor | None, ids_b: torch.Tensor | None,
              mask_b: torch.Tensor | None) -> tuple[State, torch.Tensor]:
        s0, s1, mask = self.embedding(ids_a, mask_a, ids_b, mask_b)  # (B, T, D) x2, (B, T)
        return (s0, s1), mask  # a single sentence feeds both inputs of the first cell

    def step(self, k: int, state: State, mask: torch.Tensor) -> tuple[State, torch.Tensor]:
        s0, s1 = state  # cell k reads cells k-2 and k-1
        out = self.cells[k](s0, s1, mask)  # (B, T, D)
        return (s1, out), out

    def config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this architecture (JSON-serialisable; no weights)."""
        return {
            "family": "cells",
            "genotype": self.genotype.to_dict(),
            "space": self.space.to_dict(),
            "vocab_size": self.vocab_size,
            "num_labels": self.num_labels,
            "pad_id": self.pad_id,
            "with_probes": self.with_probes,
            "embedding_rows": self.embedding_rows,
        }

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> Student:
        # Students saved before op_norm and pool existed used ops without the norm, and mean pooling.
        space = SearchSpaceConfig.from_dict({"op_norm": False, "pool": "mean", **d["space"]})
        return cls(
            Genotype.from_dict(d["genotype"]),
            space=space,
            vocab_size=d["vocab_size"],
            num_labels=d["num_labels"],
            pad_id=d.get("pad_id", 0),
            with_probes=d.get("with_probes", True),
            embedding_rows=d.get("embedding_rows"),
        )


def task_token_ids(*id_tables: torch.Tensor, special_ids: tuple[int, ...]) -> torch.Tensor:
    """The sorted distinct ids in `id_tables` (any shapes, pads included) and `special_ids`: a task's
    vocabulary. (n,) int64"""
    seen = [t.reshape(-1).long().unique() for t in id_tables]
    return torch.cat([*seen, torch.tensor(special_ids, dtype=torch.long)]).unique()


@torch.no_grad()
def keep_vocabulary(student: ProbedStack, keep_ids: torch.Tensor, *, unk_id: int) -> ProbedStack:
    """A copy of `student` whose table holds only the rows of `keep_ids` (V ids -> n rows); every
    other id reads [UNK]'s row. Text made only of kept ids gets exactly the old outputs.

    keep_ids: (n,) distinct tokenizer ids, `unk_id` and the pad id among them."""
    if student.embedding_rows is not None:
        raise ValueError("this student already has a task vocabulary")
    if isinstance(student.embedding.table, KroneckerTable):
        raise ValueError("a Kronecker table covers the whole vocabulary: it has no rows to drop")
    keep_ids = keep_ids.long().unique()
    missing = [i for i in (unk_id, student.pad_id) if not bool((keep_ids == i).any())]
    if missing:
        raise ValueError(f"keep_ids must hold the [UNK] and pad ids, missing {missing}")
    if keep_ids.min() < 0 or keep_ids.max() >= student.vocab_size:
        raise ValueError(f"keep_ids must lie in [0, {student.vocab_size})")
    small = type(student).from_config_dict({**student.config_dict(), "embedding_rows": int(keep_ids.numel())})
    state = {k: v for k, v in student.state_dict().items() if k != "embedding.table.weight"}
    id_map = torch.full((student.vocab_size,), int((keep_ids == unk_id).nonzero()), dtype=torch.long)  # (V,)
    id_map[keep_ids] = torch.arange(keep_ids.numel())
    small.load_state_dict({**state, "embedding.table.weight": student.embedding.table.weight[keep_ids],
                           "embedding.id_map": id_map})  # a family's own embeddings (positions) are kept whole
    return small.train(student.training)


def student_from_config(d: dict[str, Any]) -> ProbedStack:
    """Any family's student from its `config_dict` (students saved before families existed are cells)."""
    from search_space.transformer import SmallTransformer

    families: dict[str, type[ProbedStack]] = {"cells": Student, "transformer": SmallTransformer}
    family = d.get("family", "cells")
    if family not in families:
        raise ValueError(f"unknown student family {family!r}; known: {sorted(families)}")
    return families[family].from_config_dict(d)
