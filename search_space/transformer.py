"""The small-transformer family (TinyBERT's task-specific stage, arXiv 1909.10351): a k-layer BERT-shaped
student, distilled from the same cache as the searched cells, with a probe per layer for the hints.

Its layers keep BERT's post-norm layout, so `teacher_layer_state` can start one from the teacher's own
bottom layers when the widths agree (the layer-dropping init of DistilBERT and "Poor Man's BERT").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_space.config import TransformerConfig
from search_space.layers import PairEmbedding, ProbedStack, State

BERT_EPS = 1e-12  # BERT's LayerNorm epsilon: a teacher's layers behave as they did in the teacher
MASKED = -1e4  # additive attention bias at pads: finite, so a text with no tokens gives no NaN


class EncoderLayer(nn.Module):
    """BERT's post-norm encoder layer: self-attention, add and norm, GELU feed-forward, add and norm."""

    def __init__(self, dim: int, *, heads: int, head_dim: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim, self.attn_dropout = heads, head_dim, dropout
        width = heads * head_dim  # the attention's width: `dim` unless heads were cut from a teacher's
        self.query, self.key, self.value = nn.Linear(dim, width), nn.Linear(dim, width), nn.Linear(dim, width)
        self.attn_out, self.attn_norm = nn.Linear(width, dim), nn.LayerNorm(dim, eps=BERT_EPS)
        self.intermediate, self.output = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.out_norm = nn.LayerNorm(dim, eps=BERT_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), bias (B, 1, 1, T) added to the attention scores -> (B, T, D)."""
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, A, T, head_dim)

        a = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           attn_mask=bias, dropout_p=self.attn_dropout if self.training else 0.0)
        merged = a.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)  # (B, T, A * head_dim)
        x = self.attn_norm(x + self.dropout(self.attn_out(merged)))
        return self.out_norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class SmallTransformer(ProbedStack):
    """Token table (+ positions and segments, BERT-style), `arch.layers` encoder layers, a probe per
    layer and the cells' head. A pair is one sequence, the second sentence after the first."""

    def __init__(
        self,
        arch: TransformerConfig,
        *,
        vocab_size: int,
        num_labels: int,
        max_positions: int,
        pad_id: int = 0,
        with_probes: bool = True,
        embedding_init: torch.Tensor | None = None,
        embedding_rows: int | None = None,
    ) -> None:
        """`embedding_init`: a `(vocab_size, hidden)` table; `max_positions`: the longest input, both
        sentences of a pair together."""
        super().__init__(vocab_size=vocab_size, num_labels=num_labels, pad_id=pad_id, with_probes=with_probes,
                         embedding_rows=embedding_rows)
        self.arch, self.max_positions = arch, max_positions
        d = arch.hidden
        self.embedding = PairEmbedding(vocab_size, dim=d, pad_id=pad_id, init=embedding_init, rows=embedding_rows,
                                       rank=arch.embedding_rank)
        self.positions, self.segments = nn.Embedding(max_positions, d), nn.Embedding(2, d)
        self.norm, self.dropout = nn.LayerNorm(d, eps=BERT_EPS), nn.Dropout(arch.dropout)
        self.layers = nn.ModuleList(EncoderLayer(d, heads=arch.heads, head_dim=arch.head_width, ffn=arch.ffn,
                                                 dropout=arch.dropout)
                                    for _ in range(arch.layers))
        self.add_readout(dim=d, depth=arch.layers, dropout=arch.dropout, pool="mean")

    def embed(self, ids_a: torch.Tensor, mask_a: torch.Tensor | None, ids_b: torch.Tensor | None,
              mask_b: torch.Tensor | None) -> tuple[State, torch.Tensor]:
        mask_a = self.embedding.mask_of(ids_a, mask_a)  # (B, Ta)
        x = self.embedding.embed_tokens(ids_a, mask_a)  # (B, Ta, D)
        segment = torch.zeros_like(ids_a[0])  # (Ta,)
        mask = mask_a
        if ids_b is not None:
            mask_b = self.embedding.mask_of(ids_b, mask_b)  # (B, Tb)
            x = torch.cat([x, self.embedding.embed_tokens(ids_b, mask_b)], dim=1)  # (B, T, D)
            segment = torch.cat([segment, torch.ones_like(ids_b[0])])  # (T,)
            mask = torch.cat([mask_a, mask_b], dim=1)  # (B, T)
        x = x + self.positions.weight[: x.shape[1]] + self.segments(segment)  # (B, T, D)
        bias = (~mask)[:, None, None, :].to(x.dtype) * MASKED  # (B, 1, 1, T)
        return (self.dropout(self.norm(x)), bias), mask

    def step(self, k: int, state: State, mask: torch.Tensor) -> tuple[State, torch.Tensor]:
        x, bias = state
        x = self.layers[k](x, bias)  # (B, T, D)
        return (x, bias), x

    def dense_params(self) -> int:
        """Weights outside the embedding tables: 2 FLOPs each per token, the teacher's accounting."""
        return sum(p.numel() for name, p in self.named_parameters()
                   if not name.startswith(("embedding.", "positions.", "segments.")))

    def config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this architecture (JSON-serialisable; no weights)."""
        return {"family": "transformer", "transformer": self.arch.to_dict(), "vocab_size": self.vocab_size,
                "num_labels": self.num_labels, "max_positions": self.max_positions, "pad_id": self.pad_id,
                "with_probes": self.with_probes, "embedding_rows": self.embedding_rows}

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> SmallTransformer:
        return cls(TransformerConfig.from_dict(d["transformer"]), vocab_size=d["vocab_size"],
                   num_labels=d["num_labels"], max_positions=d["max_positions"], pad_id=d.get("pad_id", 0),
                   with_probes=d.get("with_probes", True), embedding_rows=d.get("embedding_rows"))


_LAYER_NAMES = {  # ours -> BERT's, inside one layer
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense", "output": "output.dense", "out_norm": "output.LayerNorm",
}


def _keep_strongest_neurons(state: dict[str, torch.Tensor], *, layer: int, ffn: int) -> None:
    """Cut layer `layer`'s feed-forward block to its `ffn` neurons of largest weight-norm product
    ||w_in|| * ||w_out|| (data-free magnitude pruning), in their original order, in place."""
    w_in, w_out = state[f"layers.{layer}.intermediate.weight"], state[f"layers.{layer}.output.weight"]  # (F, H), (H, F)
    keep = (w_in.norm(dim=1) * w_out.norm(dim=0)).topk(ffn).indices.sort().values  # (ffn,)
    state[f"layers.{layer}.intermediate.weight"] = w_in[keep]
    state[f"layers.{layer}.intermediate.bias"] = state[f"layers.{layer}.intermediate.bias"][keep]
    state[f"layers.{layer}.output.weight"] = w_out[:, keep]


def _keep_strongest_heads(state: dict[str, torch.Tensor], *, layer: int, heads: int, head_dim: int) -> None:
    """Cut layer `layer`'s attention to its `heads` heads of largest weight-norm product
    ||W_v[h]|| * ||W_o[:, h]|| (the magnitude of what a head adds to the residual, the ffn rule's
    analogue), in their original order, in place."""
    p = f"layers.{layer}"
    w_v, w_o = state[f"{p}.value.weight"], state[f"{p}.attn_out.weight"]  # (A*Dh, H), (H, A*Dh)
    n = w_v.shape[0] // head_dim
    per_head_v = w_v.reshape(n, -1)  # (A, Dh*H)
    per_head_o = w_o.reshape(-1, n, head_dim).transpose(0, 1).reshape(n, -1)  # (A, H*Dh)
    score = per_head_v.norm(dim=1) * per_head_o.norm(dim=1)  # (A,)
    keep = score.topk(heads).indices.sort().values  # (heads,)
    rows = (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()  # (heads * head_dim,)
    for name in ("query", "key", "value"):
        state[f"{p}.{name}.weight"] = state[f"{p}.{name}.weight"][rows]
        state[f"{p}.{name}.bias"] = state[f"{p}.{name}.bias"][rows]
    state[f"{p}.attn_out.weight"] = w_o[:, rows]


def teacher_layer_state(model: SmallTransformer, teacher: dict[str, torch.Tensor], *,
                        teacher_heads: int) -> dict[str, torch.Tensor]:
    """The entries of `model`'s state dict that a BERT teacher's weights fill: its positions, segments,
    embedding norm and bottom `layers` layers, each feed-forward block cut to the model's `ffn` strongest
    neurons and each attention to its `heads` strongest heads when those are fewer than the teacher's.
    `teacher`: the teacher's state dict, any prefix ("bert." or none). The token table comes separately,
    as `embedding_init`."""
    arch = model.arch
    found = [k for k in teacher if k.endswith("embeddings.word_embeddings.weight")]
    if len(found) != 1:
        raise ValueError(f"not a BERT state dict: expected one embeddings.word_embeddings.weight, found {found}")
    prefix = found[0][: -len("embeddings.word_embeddings.weight")]
    width = teacher[found[0]].shape[1] // teacher_heads  # the weights' shapes cannot tell the heads apart
    if arch.head_width != width or arch.heads > teacher_heads:
        raise ValueError(f"init 'teacher' needs at most the teacher's {teacher_heads} attention heads, each "
                         f"{width} wide; transformer {arch.name} has {arch.heads} of {arch.head_width} (set "
                         f"head_dim: {width} to keep fewer heads)")
    state = {"positions.weight": teacher[f"{prefix}embeddings.position_embeddings.weight"][: model.max_positions],
             "segments.weight": teacher[f"{prefix}embeddings.token_type_embeddings.weight"][:2],
             "norm.weight": teacher[f"{prefix}embeddings.LayerNorm.weight"],
             "norm.bias": teacher[f"{prefix}embeddings.LayerNorm.bias"]}
    for i in range(arch.layers):
        for ours, theirs in _LAYER_NAMES.items():
            for leaf in ("weight", "bias"):
                state[f"layers.{i}.{ours}.{leaf}"] = teacher[f"{prefix}encoder.layer.{i}.{theirs}.{leaf}"]
        if arch.ffn < state[f"layers.{i}.intermediate.bias"].shape[0]:
            _keep_strongest_neurons(state, layer=i, ffn=arch.ffn)
        if arch.heads < teacher_heads:
            _keep_strongest_heads(state, layer=i, heads=arch.heads, head_dim=width)
    own = model.state_dict()
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"the teacher's layers do not fit transformer {arch.name} ({wrong[0]}: teacher "
                         f"{tuple(state[wrong[0]].shape)}, student {tuple(own[wrong[0]].shape)}); init 'teacher' "
                         "needs the teacher's hidden size and an ffn no wider than its own, or use "
                         "init 'projected'")
    return state
