"""The prepared-data format: what the orchestrator's `prepare` stage writes and workers read.

A prepared dataset is a folder `<workspace>/prepared/<fingerprint>/` holding one Arrow IPC file
per split (memory-mapped on read) and `meta.json`. Token ids are the teacher tokenizer's ids
*without* special tokens, truncated so that the teacher's `[CLS] a [SEP] (b [SEP])` fits in
`max_length`. Students read `ids_a`/`ids_b` directly; `teacher_inputs` rebuilds the teacher's
joint sequence, so augmented examples (new id lists) need no text.

`TargetSplit` is the one in-memory view every trainer iterates: padded id tensors, gold labels
(-1 where only the teacher labels an example) and, when read from the teacher cache, the
teacher's logits and per-layer probe logits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from workers.local_files import publish_dir
from workers.splits import SPLITS, UNLABELLED, present_splits

SPLIT_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("label", pa.int64()),
        ("text_a", pa.string()),
        ("text_b", pa.string()),
        ("ids_a", pa.list_(pa.int32())),
        ("ids_b", pa.list_(pa.int32())),
    ]
)


@dataclass(frozen=True)
class PreparedMeta:
    task: str
    label_names: tuple[str, ...]
    pair: bool
    max_length: int
    metric: str
    fingerprint: str
    tokenizer: str  # folder or hub id of the teacher tokenizer the ids come from
    pad_id: int
    cls_id: int
    sep_id: int
    vocab_size: int
    sizes: dict[str, int]
    labelled_fingerprint: str | None = None  # the labelled splits' alone; None (older folders): fingerprint

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def labelled_key(self) -> str:
        """The labelled splits' fingerprint: what a teacher fine-tuned on them, and a dev score, depend on
        (not the unlabelled texts)."""
        return self.labelled_fingerprint or self.fingerprint

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreparedMeta:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        return cls(**{**d, "label_names": tuple(d["label_names"])})


def split_table(
    *, ids: list[int], labels: list[int], texts_a: list[str], texts_b: list[str] | None,
    ids_a: list[list[int]], ids_b: list[list[int]] | None,
) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "label": pa.array(labels, pa.int64()),
            "text_a": pa.array(texts_a, pa.string()),
            "text_b": pa.array(texts_b if texts_b is not None else [None] * n, pa.string()),
            "ids_a": pa.array(ids_a, pa.list_(pa.int32())),
            "ids_b": pa.array(ids_b if ids_b is not None else [[] for _ in range(n)], pa.list_(pa.int32())),
        },
        schema=SPLIT_SCHEMA,
    )


def write_prepared(out_dir: str | Path, *, meta: PreparedMeta, tables: dict[str, pa.Table]) -> Path:
    """Write all splits and meta.json atomically: into a temp folder, then one rename."""
    out_dir = Path(out_dir)
    missing = set(SPLITS) - set(tables)
    if missing:
        raise ValueError(f"write_prepared needs every split; missing {sorted(missing)}")
    if (UNLABELLED in tables) != (UNLABELLED in meta.sizes):
        raise ValueError("write_prepared: the unlabelled table and meta.sizes disagree")

    def write(folder: Path) -> None:
        for split in present_splits(meta.sizes):
            with pa.OSFile(str(folder / f"{split}.arrow"), "wb") as sink, ipc.new_file(sink, SPLIT_SCHEMA) as w:
                w.write_table(tables[split].cast(SPLIT_SCHEMA))
        (folder / "meta.json").write_text(json.dumps(meta.to_dict(), indent=2))

    # An existing folder is kept: a concurrent writer finished first (same key, same content).
    return publish_dir(out_dir, write)


def is_prepared(folder: str | Path) -> bool:
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        return False
    return all((folder / f"{s}.arrow").is_file() for s in present_splits(read_meta(folder).sizes))


def read_meta(folder: str | Path) -> PreparedMeta:
    return PreparedMeta.from_dict(json.loads((Path(folder) / "meta.json").read_text()))


def read_split_table(folder: str | Path, split: str) -> pa.Table:
    """The split as an Arrow table backed by a memory map (no copy until columns are used)."""
    if split not in (*SPLITS, UNLABELLED):
        raise ValueError(f"unknown split {split!r}; expected one of {(*SPLITS, UNLABELLED)}")
    return ipc.open_file(pa.memory_map(str(Path(folder) / f"{split}.arrow"), "r")).read_all()


def pad_id_lists(lists: pa.ListArray | pa.ChunkedArray, *, pad_id: int, width: int | None = None) -> tuple[
    np.ndarray, np.ndarray
]:
    """Variable-length id lists -> (N, T) int32 padded matrix and (N,) lengths."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets).astype(np.int64)
    flat = lists.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    width = int(max(int(lengths.max(initial=0)), 1) if width is None else width)
    out = np.full((len(lengths), width), pad_id, dtype=np.int32)
    row = np.repeat(np.arange(len(lengths)), lengths)
    col = np.arange(len(flat)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    keep = col < width
    out[row[keep], col[keep]] = flat[keep]
    return out, np.minimum(lengths, width)


@dataclass(frozen=True)
class TargetSplit:
    """Tensors for one split. Teacher targets are None for data that is not from the cache."""

    example_ids: torch.Tensor  # (N,) int64
    ids_a: torch.Tensor  # (N, Ta) int32, padded with pad_id
    len_a: torch.Tensor  # (N,) int64
    labels: torch.Tensor  # (N,) int64, NO_LABEL where only the teacher labels the example
    ids_b: torch.Tensor | None = None  # (N, Tb) int32 for pair tasks
    len_b: torch.Tensor | None = None  # (N,)
    teacher_logits: torch.Tensor | None = None  # (N, C) float32
    probe_logits: torch.Tensor | None = None  # (N, L+1, C) float32: embeddings + each hidden layer
    hidden: torch.Tensor | None = None  # (N, L+1, H) float16, pooled per-layer states

    def __len__(self) -> int:
        return int(self.example_ids.shape[0])

    @property
    def has_teacher(self) -> bool:
        return self.teacher_logits is not None

    def subset(self, index: torch.Tensor | np.ndarray | slice) -> TargetSplit:
        """Rows `index` of every tensor (a copy for index arrays, a view for slices)."""
        return replace(self, **{f.name: _take(getattr(self, f.name), index) for f in fields(self)})

    def materialize(self) -> TargetSplit:
        """A private in-memory copy (detaches from any memory map)."""
        return replace(self, **{f.name: None if (t := getattr(self, f.name)) is None else t.clone() for f in fields(self)})

    def batches(
        self, *, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
        group_by_length: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches in order, or shuffled by `seed`. `group_by_length` (with shuffle) sorts each window
        of 50 batches by length before cutting it, then shuffles the batches: far less padding per
        batch (dynamic padding pads to the batch's longest row) at nearly the same randomness."""
        n = len(self)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        cuts = [order[start:start + batch_size] for start in range(0, stop, batch_size)]
        if shuffle and group_by_length:
            cuts = _length_grouped(order[:stop], self.lengths(), batch_size=batch_size, gen=gen)
        for index in cuts:
            yield self.batch(index)

    def lengths(self) -> torch.Tensor:
        """(N,) tokens per example (both sentences for pairs)."""
        return self.len_a + (self.len_b if self.len_b is not None else 0)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch, padded only to its own longest row (dynamic padding)."""
        out = {"example_ids": self.example_ids[index], "labels": self.labels[index]}
        out["ids_a"], out["mask_a"] = _trimmed(self.ids_a[index], self.len_a[index])
        if self.ids_b is not None:
            out["ids_b"], out["mask_b"] = _trimmed(self.ids_b[index], self.len_b[index])
        for name in ("teacher_logits", "probe_logits", "hidden"):
            if (t := getattr(self, name)) is not None:
                out[name] = t[index].float()
        return out


def _length_grouped(order: torch.Tensor, lengths: torch.Tensor, *, batch_size: int,
                    gen: torch.Generator, window_batches: int = 50) -> list[torch.Tensor]:
    window = batch_size * window_batches
    cuts = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        cuts += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [cuts[i] for i in torch.randperm(len(cuts), generator=gen).tolist()]


def _take(t: torch.Tensor | None, index):
    if t is None:
        return None
    if isinstance(index, np.ndarray):
        index = torch.from_numpy(index)
    return t[index]


def _trimmed(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(lengths.max()), 1) if len(lengths) else 1
    ids = ids[:, :width].long()  # (B, T)
    mask = torch.arange(width)[None, :] < lengths[:, None]  # (B, T) bool
    return ids, mask


def load_split(folder: str | Path, split: str) -> TargetSplit:
    """A prepared split (gold labels only, no teacher targets) as a TargetSplit."""
    meta = read_meta(folder)
    table = read_split_table(folder, split)
    ids_a, len_a = pad_id_lists(table.column("ids_a"), pad_id=meta.pad_id)
    kwargs = {}
    if meta.pair:
        ids_b, len_b = pad_id_lists(table.column("ids_b"), pad_id=meta.pad_id)
        kwargs = {"ids_b": torch.from_numpy(ids_b), "len_b": torch.from_numpy(len_b)}
    return TargetSplit(
        example_ids=torch.from_numpy(table.column("id").to_numpy().copy()),
        ids_a=torch.from_numpy(ids_a),
        len_a=torch.from_numpy(len_a),
        labels=torch.from_numpy(table.column("label").to_numpy().copy()),
        **kwargs,
    )


def teacher_inputs(
    batch: dict[str, torch.Tensor], *, cls_id: int, sep_id: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """The teacher's joint `[CLS] a [SEP] (b [SEP])` inputs from a student batch (ids w/o specials)."""
    ids_a, mask_a = batch["ids_a"], batch["mask_a"]
    parts = [(ids_a, mask_a, 0)]
    if "ids_b" in batch:
        parts.append((batch["ids_b"], batch["mask_b"], 1))
    rows, types = [], []
    for r in range(ids_a.shape[0]):
        seq, tt = [cls_id], [0]
        for ids, mask, segment in parts:
            tokens = ids[r][mask[r]].tolist() + [sep_id]
            seq += tokens
            tt += [segment] * len(tokens)
        rows.append(seq)
        types.append(tt)
    width = max(len(s) for s in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (seq, tt) in enumerate(zip(rows, types)):
        input_ids[r, : len(seq)] = torch.tensor(seq)
        token_type_ids[r, : len(tt)] = torch.tensor(tt)
        attention_mask[r, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def token_budget(max_length: int, *, pair: bool) -> int:
    """Ids per text without special tokens: [CLS] a [SEP] or [CLS] a [SEP] b [SEP] fits max_length."""
    return (max_length - 3) // 2 if pair else max_length - 2


def encode_texts(tokenizer, texts: list[str], *, budget: int | None) -> list[list[int]]:
    """The one tokenization, of `prepare` and of students at prediction time: teacher-tokenizer ids
    without special tokens, each list cut to its first `budget` ids (None: full length).

    `tokenizer`: a transformers fast tokenizer or the `tokenizers.Tokenizer` it wraps (what a student
    folder's tokenizer.json loads to); both run through the same Rust encoder here."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "encode_batch"):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; load it with use_fast=True")
    # transformers sets these per call and leaves them behind; the ids here are whole, unpadded texts.
    backend.no_truncation()
    backend.no_padding()
    ids = [enc.ids for enc in backend.encode_batch(list(texts), add_special_tokens=False)]
    return ids if budget is None else [row[:budget] for row in ids]


def tokenize_ids(
    tokenizer, texts_a: list[str], texts_b: list[str] | None = None, *, max_length: int
) -> tuple[list[list[int]], list[list[int]] | None]:
    """encode_texts for a student's inputs: cut so `[CLS] a [SEP] (b [SEP])` fits max_length."""
    budget = token_budget(max_length, pair=texts_b is not None)
    return (encode_texts(tokenizer, texts_a, budget=budget),
            None if texts_b is None else encode_texts(tokenizer, texts_b, budget=budget))
