"""The prepare stage: a task's data validated, tokenized with the teacher's tokenizer and written
once per fingerprint to `<workspace>/prepared/<fingerprint>/` (the workers.dataset format).

Token ids carry no special tokens and are truncated so that the teacher's `[CLS] a [SEP]` fits in
max_length (pairs: each side to (max_length - 3) // 2, for `[CLS] a [SEP] b [SEP]`). The
fingerprint hashes everything the written files depend on: the resolved task spec, every row's
id, texts, label and split, the tokenizer's content and max_length. Same inputs give the same
folder (a cache hit: nothing is tokenized or written); any change gives a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from orchestrator.errors import AdarayError
from orchestrator.tasks import TaskConfig, TaskSpec, load_task, load_unlabelled
from orchestrator.teacher_source import check_max_length, resolve_teacher_source
from workers.dataset import (
    PreparedMeta,
    encode_texts,
    is_prepared,
    read_meta,
    split_table,
    token_budget,
    write_prepared,
)
from workers.splits import SPLITS, UNLABELLED, present_splits

# Part of every fingerprint: bump it when the written files change for the same inputs.
PREPARED_FORMAT = "adaray-prepared-1"
_CHUNK = 1024  # texts per tokenizer call: one progress step


@dataclass(frozen=True)
class PreparedData:
    folder: Path
    meta: PreparedMeta
    cache_hit: bool


def load_tokenizer(source: str):
    """The teacher's tokenizer (fast when one exists); a one-line error when it cannot load."""
    from transformers import AutoTokenizer  # heavy: only stages that tokenize need it

    source = resolve_teacher_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdarayError(f"teacher.model: cannot load a tokenizer from {source!r}: {reason}") from None
    missing = [t for t in ("pad_token_id", "cls_token_id", "sep_token_id") if getattr(tokenizer, t) is None]
    if missing:
        raise AdarayError(f"teacher.model: the tokenizer of {source!r} has no {', '.join(missing)}; "
                          "adaray needs a BERT-family teacher")
    return tokenizer


def teacher_max_length(tokenizer, *, source: str) -> int | None:
    """The longest sequence the teacher takes: the tokenizer's and the model config's limits."""
    from transformers import AutoConfig

    limits = [tokenizer.model_max_length] if 0 < tokenizer.model_max_length < 1_000_000 else []
    try:
        positions = getattr(AutoConfig.from_pretrained(source), "max_position_embeddings", None)
    except (OSError, ValueError):  # a tokenizer-only folder: the tokenizer's limit is all we know
        positions = None
    if positions:
        limits.append(int(positions))
    return min(limits) if limits else None


def open_teacher_tokenizer(model: str, *, max_length: int):
    """(source, tokenizer) for teacher.model, after checking that max_length fits the teacher."""
    source = resolve_teacher_source(model)
    tokenizer = load_tokenizer(source)
    check_max_length(max_length, limit=teacher_max_length(tokenizer, source=source), model=model)
    return source, tokenizer


def tokenize(texts: Sequence[str], *, tokenizer, budget: int | None, on_chunk=None) -> list[list[int]]:
    """workers.dataset.encode_texts in chunks, one progress step each."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), _CHUNK):
        chunk = list(texts[start:start + _CHUNK])
        ids.extend(encode_texts(tokenizer, chunk, budget=budget))
        if on_chunk:
            on_chunk(len(chunk))
    return ids


def tokenizer_hash(tokenizer) -> str:
    """The tokenizer's identity by content (vocab, normalisation, special tokens), not by path."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = backend.to_str()
    else:
        content = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()),
                              tokenizer.all_special_tokens])
    return hashlib.sha256(content.encode()).hexdigest()


def fingerprint(spec: TaskSpec, splits: dict[str, pd.DataFrame], *, tokenizer, max_length: int) -> tuple[str, str]:
    """(the data's fingerprint, the labelled splits' alone): the prepared folder's key, and what a teacher
    fine-tuned on them depends on. Without unlabelled texts the two are the same."""
    h = hashlib.sha256()
    header = {"format": PREPARED_FORMAT, "spec": asdict(spec), "max_length": max_length,
              "tokenizer": tokenizer_hash(tokenizer)}
    h.update(json.dumps(header, sort_keys=True).encode())
    for split in SPLITS:
        h.update(_rows_json(split, splits[split], pair=spec.pair))
    labelled = h.hexdigest()[:16]
    if UNLABELLED in splits:
        h.update(_rows_json(UNLABELLED, splits[UNLABELLED], pair=spec.pair))
    return h.hexdigest()[:16], labelled


def _rows_json(split: str, df: pd.DataFrame, *, pair: bool) -> bytes:
    rows = [split, df.index.tolist(), df["text_a"].tolist(), df["text_b"].tolist() if pair else None,
            df["label"].tolist()]
    return json.dumps(rows).encode()


def load_and_fingerprint(task: TaskConfig, *, tokenizer_source: str):
    """(tokenizer source, tokenizer, spec, splits (the unlabelled texts too, when given), fingerprints)."""
    source, tokenizer = open_teacher_tokenizer(tokenizer_source, max_length=task.max_length)
    spec, splits = load_task(task)
    unlabelled = load_unlabelled(task, spec=spec, splits=splits)
    if unlabelled is not None:
        splits = {**splits, UNLABELLED: unlabelled}
    return source, tokenizer, spec, splits, fingerprint(spec, splits, tokenizer=tokenizer, max_length=task.max_length)


def prepared_folder(task: TaskConfig, *, tokenizer_source: str, workspace: str | Path) -> Path:
    """Where `prepare` writes the task (read and fingerprinted here; nothing is written)."""
    *_, (key, _) = load_and_fingerprint(task, tokenizer_source=tokenizer_source)
    return Path(workspace) / "prepared" / key


def prepare(task: TaskConfig, *, tokenizer_source: str, workspace: str | Path, progress: bool = True) -> PreparedData:
    """Load and validate the task, tokenize it and write it once per fingerprint.

    Everything that can be wrong with the inputs fails before anything is written.
    """
    source, tokenizer, spec, splits, (key, labelled) = load_and_fingerprint(task, tokenizer_source=tokenizer_source)
    folder = Path(workspace) / "prepared" / key
    if is_prepared(folder):
        return PreparedData(folder=folder, meta=read_meta(folder), cache_hit=True)

    budget = token_budget(task.max_length, pair=spec.pair)
    sides = ("text_a", "text_b") if spec.pair else ("text_a",)
    total = sum(len(df) for df in splits.values()) * len(sides)
    tables = {}
    with _progress(enabled=progress) as bar:
        job = bar.add_task(f"tokenizing {spec.name}", total=total)
        for split in present_splits(splits):
            df = splits[split]
            ids = {side: tokenize(df[side].tolist(), tokenizer=tokenizer, budget=budget,
                                  on_chunk=lambda n: bar.advance(job, n)) for side in sides}
            tables[split] = split_table(
                ids=df.index.tolist(), labels=df["label"].tolist(), texts_a=df["text_a"].tolist(),
                texts_b=df["text_b"].tolist() if spec.pair else None,
                ids_a=ids["text_a"], ids_b=ids.get("text_b"),
            )
    meta = PreparedMeta(
        task=spec.name, label_names=spec.label_names, pair=spec.pair, max_length=task.max_length,
        metric=spec.metric, fingerprint=key, labelled_fingerprint=labelled, tokenizer=source,
        pad_id=tokenizer.pad_token_id, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
        vocab_size=len(tokenizer),
        sizes={split: len(splits[split]) for split in present_splits(splits)},
    )
    write_prepared(folder, meta=meta, tables=tables)
    return PreparedData(folder=folder, meta=meta, cache_hit=False)


def _progress(*, enabled: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not (enabled and console.is_terminal))


@dataclass(frozen=True)
class LengthSummary:
    """Token lengths of one split as the teacher sees it ([CLS] a [SEP] (b [SEP]), untruncated)."""

    p50: int
    p90: int
    p99: int
    max: int
    truncated: float  # share of rows cut to fit max_length


def length_summary(df: pd.DataFrame, *, tokenizer, max_length: int, pair: bool) -> LengthSummary:
    budget = token_budget(max_length, pair=pair)
    len_a = np.array([len(ids) for ids in tokenize(df["text_a"].tolist(), tokenizer=tokenizer, budget=None)])
    if pair:
        len_b = np.array([len(ids) for ids in tokenize(df["text_b"].tolist(), tokenizer=tokenizer, budget=None)])
        lengths, cut = len_a + len_b + 3, (len_a > budget) | (len_b > budget)
    else:
        lengths, cut = len_a + 2, len_a > budget
    p50, p90, p99 = (int(v) for v in np.percentile(lengths, [50, 90, 99], method="higher"))
    return LengthSummary(p50=p50, p90=p90, p99=p99, max=int(lengths.max()), truncated=float(cut.mean()))
