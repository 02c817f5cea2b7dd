"""The derived student: the supernet's design with only the genotype's ops and depth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_space.config import SearchSpaceConfig
from search_space.genotype import Genotype
from search_space.layers import CellOutput, Head, PairEmbedding, Probe, masked_mean
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


@dataclass
class StudentOutput:
    logits: torch.Tensor  # (B, C)
    cell_probe_logits: list[torch.Tensor] = field(
        default_factory=list
    )  # (B, C) per cell; empty without probes


class Student(nn.Module):
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
        super().__init__()
        if genotype.num_nodes != space.num_nodes:
            raise ValueError(f"genotype has {genotype.num_nodes} nodes, the space {space.num_nodes}")
        foreign = sorted({op for node in genotype.nodes for op, _ in node} - set(space.primitives))
        if foreign:
            raise ValueError(f"genotype uses ops {foreign} outside the space's primitives")
        self.genotype, self.space = genotype, space
        self.vocab_size, self.num_labels, self.pad_id, self.with_probes = (
            vocab_size,
            num_labels,
            pad_id,
            with_probes,
        )
        self.embedding_rows = embedding_rows
        d = space.embed_dim
        self.embedding = PairEmbedding(
            vocab_size, dim=d, pad_id=pad_id, dropout=space.dropout, init=embedding_init, rows=embedding_rows,
            rank=space.embedding_rank,
        )
        self.cells = nn.ModuleList(StudentCell(genotype, dim=d, norm=space.op_norm) for _ in range(genotype.depth))
        self.probes = nn.ModuleList(
            Probe(d, num_labels=num_labels) for _ in range(genotype.depth) if with_probes
        )
        self.head = Head(d, num_labels=num_labels, dropout=space.dropout)

    def forward(
        self,
        ids_a: torch.Tensor,
        mask_a: torch.Tensor | None,
        ids_b: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> StudentOutput:
        """ids/masks (B, T); a single sentence feeds both inputs of the first cell."""
        s0, s1, mask = self.embedding(ids_a, mask_a, ids_b, mask_b)  # (B, T, D) x2, (B, T)
        outputs = []
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, mask)
            outputs.append(s1)
        pooled = torch.stack([masked_mean(h, mask) for h in outputs], dim=1)  # (B, K, D)
        probes = [probe(h, mask) for probe, h in zip(self.probes, outputs, strict=False)]
        return StudentOutput(logits=self.head(pooled), cell_probe_logits=probes)

    @torch.no_grad()
    def early_exit(
        self,
        ids_a: torch.Tensor,
        mask_a: torch.Tensor | None,
        ids_b: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
        *,
        threshold: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """FastBERT-style inference: an example stops after the first cell whose probe's normalised
        entropy (0 certain, 1 uniform) is below `threshold`, and takes that probe's logits; the rest go
        on, the last cell's through the head. Threshold 0 is the full model. Returns logits (B, C) and
        the cells each example ran (B,)."""
        if not self.with_probes:
            raise ValueError("early exit needs the cells' probes: this student was built without them")
        s0, s1, mask = self.embedding(ids_a, mask_a, ids_b, mask_b)  # (B, T, D) x2, (B, T)
        batch = s0.shape[0]
        logits = s0.new_empty(batch, self.num_labels)  # (B, C)
        cells_run = torch.full((batch,), len(self.cells), dtype=torch.long)  # (B,)
        rows = torch.arange(batch)  # (b,) the examples still running
        pooled: list[torch.Tensor] = []  # (b, D) per cell so far
        log_c = torch.log(torch.tensor(float(self.num_labels)))
        for k, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, mask)
            pooled.append(masked_mean(s1, mask))
            if k == len(self.cells) - 1:
                logits[rows] = self.head(torch.stack(pooled, dim=1))
                break
            probe = self.probes[k](s1, mask)  # (b, C)
            log_p = probe.log_softmax(dim=-1)
            entropy = -(log_p.exp() * log_p).sum(dim=-1) / log_c  # (b,)
            done = entropy < threshold
            logits[rows[done]], cells_run[rows[done]] = probe[done], k + 1
            go = ~done
            if not bool(go.any()):
                break
            rows, s0, s1, mask = rows[go], s0[go], s1[go], mask[go]
            pooled = [p[go] for p in pooled]
        return logits, cells_run

    def config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this architecture (JSON-serialisable; no weights)."""
        return {
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
        # Students saved before op_norm existed used ops without the norm.
        space = SearchSpaceConfig.from_dict({"op_norm": False, **d["space"]})
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
def keep_vocabulary(student: Student, keep_ids: torch.Tensor, *, unk_id: int) -> Student:
    """A copy of `student` whose table holds only the rows of `keep_ids` (V ids -> n rows); every
    other id reads [UNK]'s row. Text made only of kept ids gets exactly the old outputs.

    keep_ids: (n,) distinct tokenizer ids, `unk_id` and the pad id among them."""
    if student.embedding_rows is not None:
        raise ValueError("this student already has a task vocabulary")
    keep_ids = keep_ids.long().unique()
    missing = [i for i in (unk_id, student.pad_id) if not bool((keep_ids == i).any())]
    if missing:
        raise ValueError(f"keep_ids must hold the [UNK] and pad ids, missing {missing}")
    if keep_ids.min() < 0 or keep_ids.max() >= student.vocab_size:
        raise ValueError(f"keep_ids must lie in [0, {student.vocab_size})")
    small = type(student)(student.genotype, space=student.space, vocab_size=student.vocab_size,
                          num_labels=student.num_labels, pad_id=student.pad_id, with_probes=student.with_probes,
                          embedding_rows=int(keep_ids.numel()))
    state = {k: v for k, v in student.state_dict().items() if k != "embedding.table.weight"}
    id_map = torch.full((student.vocab_size,), int((keep_ids == unk_id).nonzero()), dtype=torch.long)  # (V,)
    id_map[keep_ids] = torch.arange(keep_ids.numel())
    small.load_state_dict({**state, "embedding.table.weight": student.embedding.table.weight[keep_ids],
                           "embedding.id_map": id_map})
    return small.train(student.training)
