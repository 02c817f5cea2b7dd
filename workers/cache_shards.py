"""Shards of the teacher cache: their Arrow schema, the plan of which rows go where, the actor that
runs the teacher over one shard and writes it, and the zero-copy read back into torch.

Row order of a cache split is copy-major: rows [0, N) are the prepared split itself (copy 0), rows
[c*N, (c+1)*N) its c-th augmented copy. Each shard is one record batch in an uncompressed Arrow
IPC file, so readers can memory-map it.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch

from workers.augment import Augmenter
from workers.cache_fs import resolve_fs, write_atomic
from workers.dataset import TargetSplit, pad_id_lists, read_split_table, teacher_inputs
from workers.splits import NO_LABEL, UNLABELLED
from workers.teacher import length_sorted_batches, load_teacher

TEACHER_FILES = ("config.json", "model.safetensors", "probes.safetensors")  # what the actors load


@dataclass(frozen=True)
class CacheLayout:
    """What fixes the shard schema."""

    max_length: int
    pair: bool
    num_labels: int
    num_layers: int  # L: probes cover L+1 layers
    hidden_size: int
    store_hidden: bool

    def schema(self) -> pa.Schema:
        p, c, h, t = self.num_layers + 1, self.num_labels, self.hidden_size, self.max_length
        fields = [
            ("id", pa.int64()), ("source_id", pa.int64()), ("copy", pa.int16()), ("label", pa.int64()),
            ("ids_a", pa.list_(pa.int32(), t)), ("len_a", pa.int32()),
        ]
        if self.pair:
            fields += [("ids_b", pa.list_(pa.int32(), t)), ("len_b", pa.int32())]
        fields += [("teacher_logits", pa.list_(pa.float32(), c)), ("probe_logits", pa.list_(pa.float32(), p * c))]
        if self.store_hidden:
            fields.append(("hidden", pa.list_(pa.float16(), p * h)))
        return pa.schema(fields)


@dataclass(frozen=True)
class ShardTask:
    name: str
    split: str
    start: int  # rows [start, stop) of the cache split
    stop: int


def plan_shards(*, sizes: dict[str, int], copies: int, shard_size: int) -> list[ShardTask]:
    """Train (with its augmented copies, then the task's unlabelled texts) and dev, cut into shards of
    `shard_size` rows."""
    rows = {"train": sizes["train"] * (copies + 1) + sizes.get(UNLABELLED, 0), "dev": sizes["dev"]}
    return [
        ShardTask(f"{split}-{i:05d}.arrow", split, start, min(start + shard_size, n))
        for split, n in rows.items()
        for i, start in enumerate(range(0, n, shard_size))
    ]


@dataclass(frozen=True)
class SplitInputs:
    """The prepared split the actors read (shipped once through the object store)."""

    example_ids: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) int64
    ids_a: np.ndarray  # (N, T) int32, padded
    len_a: np.ndarray  # (N,) int32
    ids_b: np.ndarray | None = None
    len_b: np.ndarray | None = None

    @classmethod
    def read(cls, folder: Path, split: str, *, width: int, pad_id: int, pair: bool) -> SplitInputs:
        table = read_split_table(folder, split)
        ids_a, len_a = pad_id_lists(table.column("ids_a"), pad_id=pad_id, width=width)
        ids_b, len_b = pad_id_lists(table.column("ids_b"), pad_id=pad_id, width=width) if pair else (None, None)
        return cls(
            example_ids=table.column("id").to_numpy(), labels=table.column("label").to_numpy(),
            ids_a=ids_a, len_a=len_a.astype(np.int32), ids_b=ids_b, len_b=None if len_b is None else len_b.astype(np.int32),
        )

    def followed_by(self, other: SplitInputs) -> SplitInputs:
        """These rows, then `other`'s (same width and pairing)."""
        joined = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            joined[f.name] = None if mine is None else np.concatenate([mine, theirs])
        return SplitInputs(**joined)


def source_rows(r: np.ndarray, *, labelled: int, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """(copy, index) of transfer-set rows `r` (n,) in a split's inputs (its labelled rows, then its unlabelled
    texts): `copies + 1` blocks of the labelled rows, copy-major, then each unlabelled text once. Copies of the
    texts added nothing on a small task, at 1.6x the retrain's CPU (docs/experiments.md)."""
    tail = r >= labelled * (copies + 1)
    return np.where(tail, 0, r // labelled), np.where(tail, r - labelled * copies, r % labelled)


class ShardWriter:
    """Runs the teacher over shards and writes each one to the cache folder (a Ray actor)."""

    def __init__(
        self, *, teacher_files: dict[str, bytes], inputs: dict[str, SplitInputs], layout: CacheLayout,
        special: dict[str, int], augmenter: Augmenter | None, copies: int, cache_uri: str, batch_size: int,
    ) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # one actor per CPU slot: threads would only contend
        with tempfile.TemporaryDirectory(prefix="adaray-teacher-") as folder:
            for name, data in teacher_files.items():
                (Path(folder) / name).write_bytes(data)
            dtype = torch.float16 if self.device.type == "cuda" else None
            self.teacher = load_teacher(folder, device=self.device, dtype=dtype)
        self.inputs, self.layout, self.special, self.augmenter = inputs, layout, special, augmenter
        self.copies = {"train": copies, "dev": 0}
        self.labelled = {split: int((src.labels != NO_LABEL).sum()) for split, src in inputs.items()}
        self.fs, self.base = resolve_fs(cache_uri)
        self.batch_size = batch_size

    def write(self, task: ShardTask) -> dict:
        """Compute, serialise and atomically write one shard; its manifest record."""
        rows, copy = self.rows(task)
        data = serialise(shard_batch(rows, copy, self.targets(rows), start=task.start, layout=self.layout))
        write_atomic(self.fs, f"{self.base}/{task.name}", data)
        return {"name": task.name, "split": task.split, "rows": task.stop - task.start,
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": data.size}

    def rows(self, task: ShardTask) -> tuple[TargetSplit, np.ndarray]:
        """The shard's examples (prepared rows, augmented where copy > 0, with NO_LABEL) and copy (n,)."""
        src = self.inputs[task.split]
        copy, index = source_rows(np.arange(task.start, task.stop), labelled=self.labelled[task.split],
                                  copies=self.copies[task.split])
        ids_a, len_a = src.ids_a[index], src.len_a[index].copy()
        ids_b, len_b = (src.ids_b[index], src.len_b[index].copy()) if self.layout.pair else (None, None)
        labels = np.where(copy > 0, NO_LABEL, src.labels[index])
        for j in np.flatnonzero(copy > 0):
            a, b = self.augmenter.augment_example(
                ids_a[j, :len_a[j]], None if ids_b is None else ids_b[j, :len_b[j]],
                example_id=src.example_ids[index[j]], copy=copy[j],
            )
            ids_a[j], len_a[j] = _padded(a, ids_a.shape[1], self.special["pad_id"]), len(a)
            if ids_b is not None:
                ids_b[j], len_b[j] = _padded(b, ids_b.shape[1], self.special["pad_id"]), len(b)
        t = torch.from_numpy
        rows = TargetSplit(
            example_ids=t(src.example_ids[index]), ids_a=t(ids_a), len_a=t(len_a.astype(np.int64)), labels=t(labels),
            ids_b=None if ids_b is None else t(ids_b), len_b=None if len_b is None else t(len_b.astype(np.int64)),
        )
        return rows, copy

    @torch.inference_mode()
    def targets(self, rows: TargetSplit) -> dict[str, np.ndarray]:
        """Teacher logits (n, C), probe logits (n, (L+1)*C), pooled states (n, (L+1)*H) fp16."""
        n, lay = len(rows), self.layout
        out = {"teacher_logits": np.empty((n, lay.num_labels), np.float32),
               "probe_logits": np.empty((n, (lay.num_layers + 1) * lay.num_labels), np.float32)}
        if lay.store_hidden:
            out["hidden"] = np.empty((n, (lay.num_layers + 1) * lay.hidden_size), np.float16)
        for order, batch in length_sorted_batches(rows, batch_size=self.batch_size):
            index = order.numpy()
            inputs = teacher_inputs(batch, **self.special)
            result = self.teacher(**{k: v.to(self.device) for k, v in inputs.items()})
            out["teacher_logits"][index] = result.logits.float().cpu().numpy()
            out["probe_logits"][index] = result.probe_logits.float().flatten(1).cpu().numpy()
            if lay.store_hidden:
                out["hidden"][index] = result.pooled.half().flatten(1).cpu().numpy()
        return out


def _padded(ids: np.ndarray, width: int, pad_id: int) -> np.ndarray:
    row = np.full(width, pad_id, dtype=np.int32)
    row[:len(ids)] = ids
    return row


def shard_batch(rows: TargetSplit, copy: np.ndarray, targets: dict[str, np.ndarray], *, start: int,
                layout: CacheLayout) -> pa.RecordBatch:
    n = len(rows)
    arrays = {
        "id": pa.array(np.arange(start, start + n), pa.int64()),
        "source_id": pa.array(rows.example_ids.numpy(), pa.int64()),
        "copy": pa.array(copy.astype(np.int16), pa.int16()),
        "label": pa.array(rows.labels.numpy(), pa.int64()),
        "ids_a": fixed_lists(rows.ids_a.numpy(), pa.int32()),
        "len_a": pa.array(rows.len_a.numpy().astype(np.int32), pa.int32()),
    }
    if layout.pair:
        arrays["ids_b"] = fixed_lists(rows.ids_b.numpy(), pa.int32())
        arrays["len_b"] = pa.array(rows.len_b.numpy().astype(np.int32), pa.int32())
    arrays["teacher_logits"] = fixed_lists(targets["teacher_logits"], pa.float32())
    arrays["probe_logits"] = fixed_lists(targets["probe_logits"], pa.float32())
    if layout.store_hidden:
        arrays["hidden"] = fixed_lists(targets["hidden"], pa.float16())
    return pa.RecordBatch.from_arrays(list(arrays.values()), schema=layout.schema())


def serialise(batch: pa.RecordBatch) -> pa.Buffer:
    """One record batch as an uncompressed Arrow IPC file (memory-mappable)."""
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def fixed_lists(values: np.ndarray, type_: pa.DataType) -> pa.FixedSizeListArray:
    """(n, w) array -> fixed_size_list<type>[w] without copying row by row."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).ravel(), type_), values.shape[1])


def column_tensor(column: pa.Array, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A primitive or fixed-size-list column as a tensor over the same memory (no copy)."""
    if pa.types.is_fixed_size_list(column.type):
        column = column.flatten()
    if len(column) == 0:
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    with warnings.catch_warnings():  # read-only memory maps: the tensors are only ever read
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(memoryview(column.buffers()[1]), dtype=dtype, offset=column.offset * itemsize, count=len(column))
    return flat.view(shape)
