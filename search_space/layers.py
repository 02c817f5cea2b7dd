"""Building blocks shared by the supernet and the derived student, so both count alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def project_embeddings(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """Teacher word embeddings `(V, H)` projected onto their top-`dim` principal directions.

    Returns the centred table times those directions, `(V, dim)`: the width-`dim` table that
    keeps the most variance of the teacher's (the mean row carries nothing that tells tokens
    apart, so it is dropped).
    """
    vocab, hidden = embeddings.shape
    if not 0 < dim <= min(vocab, hidden):
        raise ValueError(
            f"cannot project ({vocab}, {hidden}) embeddings to width {dim}: need 0 < dim <= {min(vocab, hidden)}"
        )
    centred = embeddings.detach().float()
    centred = centred - centred.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(V, H), H)
    directions = vh[:dim].T  # (H, dim)
    # SVD signs are arbitrary: fix them so the init is the same on every backend.
    pivot = directions.gather(0, directions.abs().argmax(dim=0, keepdim=True))  # (1, dim)
    directions = directions * torch.where(pivot < 0, -1.0, 1.0)
    return centred @ directions  # (V, dim)


def kronecker_shapes(rows: int, dim: int) -> tuple[int, int, int, int]:
    """(v1, v2, d1, d2) of a Kronecker-factored (rows, dim) table: d1 * d2 = dim with d1 the largest
    divisor of dim at most its square root, v2 = ceil(sqrt(rows)), v1 * v2 >= rows."""
    d1 = max(k for k in range(1, math.isqrt(dim) + 1) if dim % k == 0)
    v2 = math.isqrt(rows - 1) + 1 if rows > 1 else 1
    return -(-rows // v2), v2, d1, dim // d1


class KroneckerTable(nn.Module):
    """A (rows, dim) token table as a sum of `terms` Kronecker products (KroneckerBERT, arXiv
    2109.06243): row i is sum_k a_k[i // v2] (x) b_k[i % v2], with a_k (v1, d1) and b_k (v2, d2), so
    terms * (v1 * d1 + v2 * d2) parameters instead of rows * dim. An `init` (rows, dim) is fitted by
    the nearest Kronecker sum (Van Loan and Pitsianis: the SVD of the table's rearrangement)."""

    def __init__(self, rows: int, dim: int, *, terms: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.terms = rows, terms
        self.v1, self.v2, self.d1, self.d2 = kronecker_shapes(rows, dim)
        scale = terms ** -0.25  # each entry sums `terms` products: unit variance, as nn.Embedding's
        self.a = nn.Parameter(torch.randn(terms, self.v1, self.d1) * scale)  # (r, v1, d1)
        self.b = nn.Parameter(torch.randn(terms, self.v2, self.d2) * scale)  # (r, v2, d2)
        if init is not None:
            self._fit(init)

    @torch.no_grad()
    def _fit(self, init: torch.Tensor) -> None:
        full = init.new_zeros(self.v1 * self.v2, self.d1 * self.d2)
        full[: init.shape[0]] = init.float()  # rows past the vocabulary: zero, never looked up
        # R[(i, p), (j, q)] = E[i * v2 + j, p * d2 + q]: E is sum_k a_k (x) b_k exactly when R is rank r.
        rearranged = full.view(self.v1, self.v2, self.d1, self.d2).permute(0, 2, 1, 3).reshape(
            self.v1 * self.d1, self.v2 * self.d2)
        u, sv, vh = torch.linalg.svd(rearranged, full_matrices=False)
        root = sv[: self.terms].sqrt()  # (r,)
        self.a.copy_((u[:, : self.terms] * root).T.reshape(self.terms, self.v1, self.d1))
        self.b.copy_((vh[: self.terms] * root[:, None]).reshape(self.terms, self.v2, self.d2))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> (B, T, d1 * d2)"""
        a = self.a[:, ids // self.v2]  # (r, B, T, d1)
        b = self.b[:, ids % self.v2]  # (r, B, T, d2)
        return torch.einsum("rbtp,rbtq->btpq", a, b).flatten(-2)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: x (..., T, D), mask (..., T) -> (..., D)."""
    m = mask.to(dtype=x.dtype).unsqueeze(-1)  # (..., T, 1)
    return (x * m).sum(dim=-2) / m.sum(dim=-2).clamp_min(1.0)


def masked_pool(x: torch.Tensor, mask: torch.Tensor, *, how: str) -> torch.Tensor:
    """Mean or max over real tokens: x (..., T, D), mask (..., T) -> (..., D); 0 where no token is real."""
    if how == "mean":
        return masked_mean(x, mask)
    if how != "max":
        raise ValueError(f"pool must be 'mean' or 'max', got {how!r}")
    real = mask.bool().unsqueeze(-1)  # (..., T, 1)
    top = x.masked_fill(~real, torch.finfo(x.dtype).min).amax(dim=-2)  # (..., D)
    return top * real.any(dim=-2).to(dtype=x.dtype)


def _right_pad(
    ids: torch.Tensor, mask: torch.Tensor, length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - ids.shape[1]
    if extra == 0:
        return ids, mask
    return F.pad(ids, (0, extra), value=pad_id), F.pad(mask, (0, extra), value=0)


class PairEmbedding(nn.Module):
    """Token table of width d; embeds one sentence, or a pair separately, for the first cell.

    With `rows` (a task vocabulary) the table holds only `rows` rows and the buffer `id_map` (V,)
    sends each tokenizer id to its row (ids the task never used share [UNK]'s row); it is filled by
    `search_space.student.keep_vocabulary` or by loading saved weights. The inputs stay the
    tokenizer's ids either way.

    With `rank` r the table is low-rank (LadaBERT, arXiv 2004.04124): rows of width r, then `up`, an
    (r -> d) linear map; an `init` is factored by its SVD (the best rank-r fit of it). With
    `kronecker` k it is a `KroneckerTable` of k terms over the whole vocabulary (a task vocabulary
    would not shrink it)."""

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int,
        pad_id: int = 0,
        dropout: float = 0.0,
        init: torch.Tensor | None = None,
        rows: int | None = None,
        rank: int | None = None,
        kronecker: int | None = None,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        width = dim if rank is None else rank
        if kronecker is not None:
            if rank is not None or rows is not None:
                raise ValueError("a Kronecker table takes neither a rank nor a task vocabulary")
            if init is not None and tuple(init.shape) != (vocab_size, dim):
                raise ValueError(f"embedding init must be ({vocab_size}, {dim}), got {tuple(init.shape)}")
            self.id_map, self.up = None, None
            self.table = KroneckerTable(vocab_size, dim, terms=kronecker, init=init)
            self.dropout = nn.Dropout(dropout)
            return
        if rows is None:
            self.id_map = None
            # Stored at width d directly (not H then a projection) to keep the student small.
            self.table = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        else:
            if init is not None:
                raise ValueError("a task-vocabulary table is filled by keep_vocabulary, not by an init")
            self.register_buffer("id_map", torch.zeros(vocab_size, dtype=torch.long))  # (V,) id -> row
            self.table = nn.Embedding(rows, width)  # pads are masked to zero in embed_tokens, whatever their row
        self.up = None if rank is None else nn.Linear(rank, dim, bias=False)  # (r -> d)
        if init is not None:
            if tuple(init.shape) != (vocab_size, dim):
                raise ValueError(f"embedding init must be ({vocab_size}, {dim}), got {tuple(init.shape)}")
            with torch.no_grad():
                if self.up is None:
                    self.table.weight.copy_(init)
                else:
                    u, s, vh = torch.linalg.svd(init.float(), full_matrices=False)  # (V, d), (d,), (d, d)
                    self.table.weight.copy_(u[:, :rank] * s[:rank])  # (V, r)
                    self.up.weight.copy_(vh[:rank].T)  # (d, r): table @ up.weight.T is the rank-r fit of init
                self.table.weight[pad_id].zero_()
        self.dropout = nn.Dropout(dropout)

    def embed_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One sentence: ids, mask (B, T) -> (B, T, D), zero at pads."""
        rows = ids if self.id_map is None else self.id_map[ids]  # (B, T)
        x = self.table(rows)  # (B, T, D), or (B, T, r) when low-rank
        x = self.dropout(x if self.up is None else self.up(x))  # (B, T, D)
        return x * mask.to(dtype=x.dtype).unsqueeze(-1)

    def mask_of(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The real-token mask (B, T) as bool: the one given, or every id that is not the pad id."""
        return (ids != self.pad_id) if mask is None else mask.to(torch.bool)

    def forward(
        self,
        ids_a: torch.Tensor,
        mask_a: torch.Tensor | None,
        ids_b: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (s0, s1, mask): the first cell's two inputs (B, T, D) and the real-token mask (B, T)."""
        mask_a = self.mask_of(ids_a, mask_a)
        if ids_b is None:
            x = self.embed_tokens(ids_a, mask_a)
            return x, x, mask_a
        mask_b = self.mask_of(ids_b, mask_b)
        # Sentences padded to different lengths: right-pad the shorter with masked pads.
        length = max(ids_a.shape[1], ids_b.shape[1])
        ids_a, mask_a = _right_pad(ids_a, mask_a, length, self.pad_id)
        ids_b, mask_b = _right_pad(ids_b, mask_b, length, self.pad_id)
        # Cells add the two sentences position-wise: a position is real if it is in either.
        return self.embed_tokens(ids_a, mask_a), self.embed_tokens(ids_b, mask_b), mask_a | mask_b


class CellOutput(nn.Module):
    """Attention-weighted sum of a cell's intermediate nodes, scored from their mean-pooled states."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        # Stacked cells add several op outputs per node; the norm keeps the scale from drifting.
        self.norm = nn.LayerNorm(dim)

    def forward(self, nodes: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(nodes, dim=1)  # (B, N, T, D)
        summary = masked_mean(stacked, mask.unsqueeze(1))  # (B, N, D)
        weights = self.score(summary).squeeze(-1).softmax(dim=-1)  # (B, N)
        out = torch.einsum("bn,bntd->btd", weights, stacked)  # (B, T, D)
        return self.norm(out) * mask.to(dtype=out.dtype).unsqueeze(-1)


class Probe(nn.Module):
    """A block's own classifier for the KD hints and early exit: tanh, linear over its pooled output."""

    def __init__(self, dim: int, *, num_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.tanh(pooled))  # (B, D) -> (B, C)


class Head(nn.Module):
    """Attention over the cells' pooled outputs, then dense, tanh and the classifier."""

    def __init__(self, dim: int, *, num_labels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: (B, K, D), each active cell's output mean-pooled over real tokens -> (B, C)."""
        weights = self.score(pooled).squeeze(-1).softmax(dim=-1)  # (B, K)
        summary = torch.einsum("bk,bkd->bd", weights, pooled)  # (B, D)
        # dense before tanh (as BERT's pooler) so the two linears do not collapse into one
        return self.classifier(self.dropout(torch.tanh(self.dense(summary))))


@dataclass
class StudentOutput:
    logits: torch.Tensor  # (B, C)
    cell_probe_logits: list[torch.Tensor] = field(
        default_factory=list
    )  # (B, C) per block (cell or layer); empty without probes


State = tuple[torch.Tensor, ...]  # what a stack carries from block to block, each (B, T, D)


class ProbedStack(nn.Module):
    """A student's shape, whatever its blocks (searched cells, transformer layers): embed, run blocks,
    a probe per block (the KD hints, early exit), and a head over every block's pooled output (mean or max
    over real tokens: `pool`).

    Subclasses define `embed` and `step`, build their modules, then call `add_readout`."""

    def __init__(self, *, vocab_size: int, num_labels: int, pad_id: int, with_probes: bool,
                 embedding_rows: int | None) -> None:
        super().__init__()
        self.vocab_size, self.num_labels, self.pad_id = vocab_size, num_labels, pad_id
        self.with_probes, self.embedding_rows = with_probes, embedding_rows

    def add_readout(self, *, dim: int, depth: int, dropout: float, pool: str) -> None:
        self.depth, self.pool = depth, pool
        self.probes = nn.ModuleList(Probe(dim, num_labels=self.num_labels) for _ in range(depth) if self.with_probes)
        self.head = Head(dim, num_labels=self.num_labels, dropout=dropout)

    def embed(self, ids_a: torch.Tensor, mask_a: torch.Tensor | None, ids_b: torch.Tensor | None,
              mask_b: torch.Tensor | None) -> tuple[State, torch.Tensor]:
        """-> (the first block's state, the real-token mask (B, T))."""
        raise NotImplementedError

    def step(self, k: int, state: State, mask: torch.Tensor) -> tuple[State, torch.Tensor]:
        """Block k: -> (the next state, its output (B, T, D))."""
        raise NotImplementedError

    def config_dict(self) -> dict:
        """Everything needed to rebuild this architecture, "family" included (JSON-serialisable; no weights)."""
        raise NotImplementedError

    @classmethod
    def from_config_dict(cls, d: dict) -> ProbedStack:
        raise NotImplementedError

    def forward(
        self,
        ids_a: torch.Tensor,
        mask_a: torch.Tensor | None,
        ids_b: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> StudentOutput:
        """ids/masks (B, T); the second sentence of a pair, or None."""
        state, mask = self.embed(ids_a, mask_a, ids_b, mask_b)
        outputs = []
        for k in range(self.depth):
            state, h = self.step(k, state, mask)
            outputs.append(h)
        pooled = torch.stack([masked_pool(h, mask, how=self.pool) for h in outputs], dim=1)  # (B, K, D)
        probes = [probe(pooled[:, k]) for k, probe in enumerate(self.probes)]
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
        """FastBERT-style inference: an example stops after the first block whose probe's normalised
        entropy (0 certain, 1 uniform) is below `threshold`, and takes that probe's logits; the rest go
        on, the last block's through the head. Threshold 0 is the full model. Returns logits (B, C) and
        the blocks each example ran (B,)."""
        if not self.with_probes:
            raise ValueError("early exit needs the blocks' probes: this student was built without them")
        state, mask = self.embed(ids_a, mask_a, ids_b, mask_b)
        batch = mask.shape[0]
        logits = state[0].new_empty(batch, self.num_labels)  # (B, C)
        blocks_run = torch.full((batch,), self.depth, dtype=torch.long)  # (B,)
        rows = torch.arange(batch)  # (b,) the examples still running
        pooled: list[torch.Tensor] = []  # (b, D) per block so far
        log_c = torch.log(torch.tensor(float(self.num_labels)))
        for k in range(self.depth):
            state, h = self.step(k, state, mask)
            pooled.append(masked_pool(h, mask, how=self.pool))
            if k == self.depth - 1:
                logits[rows] = self.head(torch.stack(pooled, dim=1))
                break
            probe = self.probes[k](pooled[-1])  # (b, C)
            log_p = probe.log_softmax(dim=-1)
            entropy = -(log_p.exp() * log_p).sum(dim=-1) / log_c  # (b,)
            done = entropy < threshold
            logits[rows[done]], blocks_run[rows[done]] = probe[done], k + 1
            go = ~done
            if not bool(go.any()):
                break
            rows, state, mask = rows[go], tuple(s[go] for s in state), mask[go]
            pooled = [p[go] for p in pooled]
        return logits, blocks_run
