"""What a search reads: teacher targets for train from the cache, gold labels for search_valid."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from search_space.cost import OpCost
from workers.cache import open_cache
from workers.dataset import TargetSplit, load_split, read_meta
from workers.splits import NO_LABEL
from workers.teacher import teacher_cost, teacher_word_embeddings

SUBSET_SEED = 0  # every seed of a configuration searches the same training subset


@dataclass
class SearchData:
    train: TargetSplit  # teacher_logits and probe_logits filled; augmented rows have label NO_LABEL
    valid: TargetSplit  # prepared search_valid split, gold labels only
    num_labels: int
    vocab_size: int
    pad_id: int
    num_teacher_layers: int
    embedding_init: torch.Tensor | None = None  # teacher word embeddings (V, H)
    max_length: int = 64  # tokens per example, for the FLOPs figures
    metric: str = "accuracy"  # the task's score, for search_valid
    teacher_cost: OpCost | None = None  # the teacher's params and FLOPs: the efficiency loss's reference


def load_search_data(
    *, cache_uri: str, prepared_dir: str, teacher_dir: str | None, max_train_examples: int | None = None
) -> SearchData:
    """Train targets from the teacher cache (memory-mapped), search_valid from the prepared folder."""
    meta = read_meta(prepared_dir)
    cache = open_cache(cache_uri)
    if int(cache.manifest["num_labels"]) != meta.num_labels:
        raise ValueError(f"cache {cache_uri} has {cache.manifest['num_labels']} labels, "
                         f"the prepared data {meta.num_labels}: they come from different tasks")
    return SearchData(
        train=sample_rows(cache.split("train"), max_train_examples, seed=SUBSET_SEED),
        valid=load_split(prepared_dir, "search_valid"),
        num_labels=meta.num_labels,
        vocab_size=meta.vocab_size,
        pad_id=meta.pad_id,
        num_teacher_layers=int(cache.manifest["num_layers"]),
        embedding_init=None if teacher_dir is None else teacher_word_embeddings(teacher_dir),
        max_length=meta.max_length,
        metric=meta.metric,
        teacher_cost=None if teacher_dir is None else teacher_cost(teacher_dir, seq_len=meta.max_length),
    )


def sample_rows(split: TargetSplit, n: int | None, *, seed: int) -> TargetSplit:
    """A fixed random `n` rows (in their original order), or the split itself when it is no larger."""
    if n is None or len(split) <= n:
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return split.subset(index)


def check_search_data(data: SearchData) -> None:
    """ValueError for data a search cannot use, before any training starts."""
    train = data.train
    if not train.has_teacher:
        raise ValueError("search train data needs teacher targets (read it from the teacher cache)")
    if len(train) < 2:
        raise ValueError(f"search needs at least 2 training examples (one per half), got {len(train)}")
    if len(data.valid) == 0 or bool((data.valid.labels == NO_LABEL).any()):
        raise ValueError("search_valid must be non-empty and fully labelled")
    if train.teacher_logits.shape[-1] != data.num_labels:
        raise ValueError(f"teacher logits have {train.teacher_logits.shape[-1]} classes, the task {data.num_labels}")
    if train.probe_logits is not None and train.probe_logits.shape[1] != data.num_teacher_layers + 1:
        raise ValueError(f"probe logits cover {train.probe_logits.shape[1]} layers, expected "
                         f"{data.num_teacher_layers} hidden layers + embeddings")
    if (train.ids_b is None) != (data.valid.ids_b is None):
        raise ValueError("train and search_valid disagree on whether the task has text pairs")
