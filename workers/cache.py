"""The teacher cache: the teacher run once over train (plus augmented copies, then the task's unlabelled
texts) and dev, by a pool of Ray actors, into Arrow shards that search and retraining read memory-mapped.

The cache lives at `<root_uri>/<key>`, keyed by what its contents depend on (teacher weights and
probes, tokenizer, data fingerprint, max length, augmentation recipe, store_hidden). Each shard is
written under a temp name and moved into place; a progress file records finished shards with
their checksums, so an interrupted build resumes; `manifest.json`, written last, makes the cache
complete. A build over a complete cache checks every shard's checksum and rebuilds bad ones.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import torch
from tqdm import tqdm

from workers.augment import Augmenter, build_augmenter
from workers.cache_fs import (
    is_file,
    normalise_uri,
    read_json,
    resolve_fs,
    sha256_of,
    write_json,
)
from workers.cache_shards import (
    TEACHER_FILES,
    CacheLayout,
    ShardTask,
    ShardWriter,
    SplitInputs,
    column_tensor,
    plan_shards,
)
from workers.config import AugmentConfig, CacheConfig
from workers.dataset import PreparedMeta, TargetSplit, is_prepared, read_meta
from workers.progress import say
from workers.splits import UNLABELLED
from workers.teacher import (
    TEACHER_JSON,
    files_sha256,
    teacher_fingerprint,
    teacher_word_embeddings,
    tokenizer_files,
)

CACHE_FORMAT = "adaray-cache-1"  # part of every key: bump when the shard format changes
MANIFEST = "manifest.json"
PROGRESS = "_progress.json"
CACHE_SPLITS = ("train", "dev")


@dataclass(frozen=True)
class CacheInfo:
    uri: str
    key: str
    cache_hit: bool
    built_shards: int
    repaired_shards: int
    rows: dict[str, int]


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    bad_shards: list[str]  # present, but the checksum differs
    missing: list[str]


def cache_key(*, teacher_dir: Path, meta: PreparedMeta, cfg: CacheConfig) -> tuple[str, dict]:
    """(key, the fingerprints it hashes)."""
    augment = cfg.augment.model_dump(mode="json") if cfg.augment.copies else {"copies": 0}
    parts = {
        "format": CACHE_FORMAT,
        "teacher": teacher_fingerprint(teacher_dir),
        "tokenizer": files_sha256(tokenizer_files(teacher_dir)),
        "data": meta.fingerprint,
        "max_length": meta.max_length,
        "augment": augment,
        "store_hidden": cfg.store_hidden,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16], parts


def cache_uri(root_uri: str, key: str) -> str:
    return f"{normalise_uri(root_uri).rstrip('/')}/{key}"


def cache_location(*, teacher_dir: Path, prepared_dir: Path, cfg: CacheConfig, root_uri: str) -> str:
    """The URI `build_cache` uses (or would use) for these inputs. Builds nothing."""
    meta, _ = _check_inputs(Path(teacher_dir), Path(prepared_dir))
    return cache_uri(root_uri, cache_key(teacher_dir=Path(teacher_dir), meta=meta, cfg=cfg)[0])


def build_cache(
    *, teacher_dir: Path, prepared_dir: Path, cfg: CacheConfig, root_uri: str, progress: bool = True,
    on_shard_done: Callable[[str], None] | None = None,
) -> CacheInfo:
    """Build (or resume, repair, reuse) the cache of `teacher_dir` over `prepared_dir`.

    Ray must already be initialised. `on_shard_done(name)` runs on the driver after each shard is
    recorded (progress hooks; tests use it to interrupt a build).
    """
    import ray

    started_ns = time.time_ns()
    teacher_dir, prepared_dir = Path(teacher_dir), Path(prepared_dir)
    meta, record = _check_inputs(teacher_dir, prepared_dir)
    key, parts = cache_key(teacher_dir=teacher_dir, meta=meta, cfg=cfg)
    uri = cache_uri(root_uri, key)
    fs, base = resolve_fs(uri)
    manifest = read_json(fs, f"{base}/{MANIFEST}")
    known = manifest or read_json(fs, f"{base}/{PROGRESS}")
    # An existing layout wins: its shards stay valid even if shard_size changed since.
    shard_size = known["shard_size"] if known else cfg.shard_size
    plan = plan_shards(sizes=meta.sizes, copies=cfg.augment.copies, shard_size=shard_size)
    rows = {split: sum(t.stop - t.start for t in plan if t.split == split) for split in CACHE_SPLITS}
    records = {s["name"]: s for s in known["shards"]} if known else {}
    done = {t.name: records[t.name] for t in plan if t.name in records and _intact(fs, base, records[t.name])}
    todo = [t for t in plan if t.name not in done]
    if manifest is not None and not todo:
        say(f"cache: hit {key}")
        return CacheInfo(uri=uri, key=key, cache_hit=True, built_shards=0, repaired_shards=0, rows=rows)
    if not ray.is_initialized():
        raise ValueError("build_cache needs Ray: call cluster.connect.ensure_ray first")
    repaired = sum(t.name in records for t in todo)
    if repaired:
        say(f"cache: rebuilding {repaired} missing or corrupted shard(s) of {key}")
    elif done:
        say(f"cache: resuming {key}: {len(done)} of {len(plan)} shards done")
    else:
        say(f"cache: building {key} ({len(plan)} shards) at {uri}")

    layout = CacheLayout(max_length=meta.max_length, pair=meta.pair, num_labels=meta.num_labels,
                         num_layers=record["num_layers"], hidden_size=record["hidden_size"],
                         store_hidden=cfg.store_hidden)
    inputs = {split: SplitInputs.read(prepared_dir, split, width=meta.max_length, pad_id=meta.pad_id, pair=meta.pair)
              for split in CACHE_SPLITS}
    # Replacements are drawn among the labelled rows' tokens; the teacher labels the unlabelled texts after them.
    augmenter = _augmenter(teacher_dir, meta=meta, train=inputs["train"], cfg=cfg.augment)
    if UNLABELLED in meta.sizes:
        inputs["train"] = inputs["train"].followed_by(
            SplitInputs.read(prepared_dir, UNLABELLED, width=meta.max_length, pad_id=meta.pad_id, pair=meta.pair))

    def record_shard(result: dict) -> None:
        done[result["name"]] = result
        write_json(fs, f"{base}/{PROGRESS}", {"key": key, "shard_size": shard_size, "shards": list(done.values())})
        if on_shard_done is not None:
            on_shard_done(result["name"])

    _run_pool(
        todo, cfg=cfg, progress=progress, on_result=record_shard,
        writer_kwargs={
            "teacher_files": ray.put({name: (teacher_dir / name).read_bytes() for name in TEACHER_FILES}),
            "inputs": ray.put(inputs), "layout": layout, "cache_uri": uri,
            "augmenter": augmenter, "copies": cfg.augment.copies,
            "special": {"cls_id": meta.cls_id, "sep_id": meta.sep_id, "pad_id": meta.pad_id},
            "batch_size": cfg.batch_size,
        },
    )
    write_json(fs, f"{base}/{MANIFEST}", {
        "format": CACHE_FORMAT, "key": key, "teacher_fingerprint": parts["teacher"],
        "tokenizer_fingerprint": parts["tokenizer"], "data_fingerprint": meta.fingerprint, "teacher_key": record["key"],
        "task": meta.task, "label_names": list(meta.label_names), "num_labels": meta.num_labels,
        "num_layers": layout.num_layers, "hidden_size": layout.hidden_size, "pair": meta.pair,
        "max_length": meta.max_length, "pad_id": meta.pad_id, "store_hidden": cfg.store_hidden,
        "augment": parts["augment"], "config": cfg.model_dump(mode="json"), "shard_size": shard_size, "rows": rows,
        "shards": [done[t.name] for t in plan],
    })
    for leftover in fs.get_file_info(pafs.FileSelector(base)):
        # Temp files older than this build are from actors killed mid-write (newer ones may be a
        # concurrent build's, still in flight).
        stale = leftover.base_name.endswith(".tmp") and (leftover.mtime_ns or 0) < started_ns
        if leftover.base_name == PROGRESS or stale:
            fs.delete_file(leftover.path)
    say(f"cache: {'repaired' if repaired else 'built'} {key}: {len(todo)} shard(s) written, rows {rows}")
    return CacheInfo(uri=uri, key=key, cache_hit=False, built_shards=len(todo), repaired_shards=repaired, rows=rows)


def _augmenter(teacher_dir: Path, *, meta: PreparedMeta, train: SplitInputs, cfg: AugmentConfig) -> Augmenter | None:
    """Neighbours among the tokens of train (computed once, on the driver; actors only apply them)."""
    if not cfg.copies:
        return None
    from transformers import AutoTokenizer

    tokens = [train.ids_a[train.ids_a != meta.pad_id]]
    if train.ids_b is not None:
        tokens.append(train.ids_b[train.ids_b != meta.pad_id])
    special = {meta.pad_id, meta.cls_id, meta.sep_id, *AutoTokenizer.from_pretrained(str(teacher_dir)).all_special_ids}
    return build_augmenter(teacher_word_embeddings(teacher_dir), train_ids=np.concatenate(tokens),
                           special_ids=special, cfg=cfg)


def _check_inputs(teacher_dir: Path, prepared_dir: Path) -> tuple[PreparedMeta, dict]:
    """Everything that can be wrong with the inputs, before any work."""
    if not is_prepared(prepared_dir):
        raise ValueError(f"no prepared data in {prepared_dir}")
    if not (teacher_dir / TEACHER_JSON).is_file():
        raise ValueError(f"{teacher_dir} is not a teacher folder (no {TEACHER_JSON}); run the teacher stage first")
    missing = [name for name in TEACHER_FILES if not (teacher_dir / name).is_file()]
    if missing:
        raise ValueError(f"teacher folder {teacher_dir} lacks {', '.join(missing)}")
    meta = read_meta(prepared_dir)
    record = json.loads((teacher_dir / TEACHER_JSON).read_text())
    if record["num_labels"] != meta.num_labels:
        raise ValueError(f"the teacher predicts {record['num_labels']} labels but task {meta.task!r} "
                         f"has {meta.num_labels}")
    vocab = json.loads((teacher_dir / "config.json").read_text()).get("vocab_size")
    if vocab is not None and meta.vocab_size > vocab:
        raise ValueError(f"the data was tokenized with {meta.vocab_size} tokens, the teacher knows {vocab}")
    return meta, record


def _intact(fs, base: str, record: dict) -> bool:
    path = f"{base}/{record['name']}"
    return is_file(fs, path) and sha256_of(fs, path) == record["sha256"]


def _run_pool(todo: list[ShardTask], *, cfg: CacheConfig, progress: bool, on_result: Callable[[dict], None],
              writer_kwargs: dict) -> None:
    """One actor per GPU, else per CPU slot (cfg.num_actors overrides); each takes the next shard
    as soon as it is free."""
    import ray

    if not todo:
        return
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 1.0)
    count = max(1, min(cfg.num_actors or gpus or int(cpus), len(todo)))
    # Fractional shares when asked for more actors than slots, so every actor can be scheduled.
    options = {"num_gpus": gpus / max(count, gpus), "num_cpus": 0} if gpus else {"num_cpus": min(1.0, cpus / count)}
    remote = ray.remote(ShardWriter).options(**options)
    actors = [remote.remote(**writer_kwargs) for _ in range(count)]
    queue, running = list(reversed(todo)), {}
    bar = tqdm(total=sum(t.stop - t.start for t in todo), desc="cache: teacher", unit="row",
               disable=None if progress else True, file=sys.stderr)
    try:
        for actor in actors:
            if queue:
                running[actor.write.remote(queue.pop())] = actor
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(ref)
            result = ray.get(ref)
            if queue:
                running[actor.write.remote(queue.pop())] = actor
            on_result(result)
            bar.update(result["rows"])
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
        if running:  # killed actors' tasks fail once their processes are gone: then nothing writes any more
            ray.wait(list(running), num_returns=len(running), timeout=60)


def verify_cache(uri: str) -> VerifyReport:
    """Check every shard of a complete cache against the manifest's checksums."""
    fs, base = resolve_fs(uri)
    manifest = read_json(fs, f"{base}/{MANIFEST}")
    if manifest is None:
        raise ValueError(f"no complete teacher cache at {uri} (no {MANIFEST})")
    missing = [s["name"] for s in manifest["shards"] if not is_file(fs, f"{base}/{s['name']}")]
    bad = [s["name"] for s in manifest["shards"] if s["name"] not in missing and not _intact(fs, base, s)]
    return VerifyReport(ok=not (bad or missing), bad_shards=bad, missing=missing)


@dataclass(frozen=True)
class CacheState:
    uri: str
    state: str  # "complete", "partial" (an interrupted build) or "absent"
    shards_done: int
    bytes_on_disk: int
    manifest: dict | None


def cache_state(uri: str) -> CacheState:
    """What is at `uri` now, without checking checksums (verify_cache does)."""
    fs, base = resolve_fs(uri)
    manifest = read_json(fs, f"{base}/{MANIFEST}")
    progress = read_json(fs, f"{base}/{PROGRESS}")
    files = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    size = sum(f.size for f in files if f.type == pafs.FileType.File)
    state = "complete" if manifest else "partial" if progress else "absent"
    shards = len((manifest or progress or {"shards": []})["shards"])
    return CacheState(uri=uri, state=state, shards_done=shards, bytes_on_disk=size, manifest=manifest)


class CacheReader:
    """A complete cache, read-only. Local shards are memory-mapped; tensors view their buffers."""

    def __init__(self, uri: str) -> None:
        self.uri = normalise_uri(uri)
        self.fs, self.base = resolve_fs(self.uri)
        manifest = read_json(self.fs, f"{self.base}/{MANIFEST}")
        if manifest is None:
            raise ValueError(f"no complete teacher cache at {uri} (no {MANIFEST})")
        self.manifest: dict = manifest
        self._shards: dict[str, pa.RecordBatch] = {}  # opened once: tensors of every split share the maps

    def table(self, name: str) -> pa.Table:
        """All columns of a split (id, source_id, copy, ...), one record batch per shard."""
        if name not in self.manifest["rows"]:
            raise ValueError(f"the cache has splits {list(self.manifest['rows'])}, not {name!r}")
        batches = [self._read(s["name"]) for s in self.manifest["shards"] if s["split"] == name]
        if not batches:
            raise ValueError(f"the cache {self.manifest['key']} holds no {name} rows")
        return pa.Table.from_batches(batches)

    def _read(self, shard: str) -> pa.RecordBatch:
        if shard not in self._shards:
            path = f"{self.base}/{shard}"
            if isinstance(self.fs, pafs.LocalFileSystem):
                source = pa.memory_map(path, "r")
            else:  # object stores cannot be mapped: the shard is read into memory
                source = pa.BufferReader(self.fs.open_input_file(path).read_buffer())
            self._shards[shard] = ipc.open_file(source).get_batch(0)
        return self._shards[shard]

    def split(self, name: str) -> TargetSplit:
        """The split with teacher targets. Rows are copy-major: the first N are the prepared split.

        example_ids are the source examples' ids (an augmented copy shares its original's).
        """
        table = self.table(name)
        m = self.manifest
        t, p, c = m["max_length"], m["num_layers"] + 1, m["num_labels"]

        def col(column: str, dtype: torch.dtype, *shape: int) -> torch.Tensor:
            parts = [column_tensor(chunk, dtype, (len(chunk), *shape)) for chunk in table.column(column).chunks]
            return parts[0] if len(parts) == 1 else torch.cat(parts)  # shards are separate files: one copy

        pair = {"ids_b": col("ids_b", torch.int32, t), "len_b": col("len_b", torch.int32).long()} if m["pair"] else {}
        return TargetSplit(
            example_ids=col("source_id", torch.int64), ids_a=col("ids_a", torch.int32, t),
            len_a=col("len_a", torch.int32).long(), labels=col("label", torch.int64), **pair,
            teacher_logits=col("teacher_logits", torch.float32, c),
            probe_logits=col("probe_logits", torch.float32, p, c),
            hidden=col("hidden", torch.float16, p, m["hidden_size"]) if m["store_hidden"] else None,
        )


def open_cache(uri: str) -> CacheReader:
    return CacheReader(uri)

