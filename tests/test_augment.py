"""Augmentation on token ids: neighbours, special tokens, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.augment import build_augmenter
from workers.config import AugmentConfig

SPECIAL = (0, 1)  # e.g. [PAD] and [UNK]
VOCAB = 40


def _embeddings() -> torch.Tensor:
    """Tokens 2k and 2k+1 are near-duplicates; pairs point in random directions."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(VOCAB // 2, 16, generator=g).repeat_interleave(2, dim=0)  # (V, H)
    return base + 0.01 * torch.randn(VOCAB, 16, generator=g)


def _augmenter(cfg: AugmentConfig, *, train_ids=np.arange(VOCAB), chunk_size: int = 1024):
    return build_augmenter(_embeddings(), train_ids=train_ids, special_ids=SPECIAL, cfg=cfg, chunk_size=chunk_size)


def test_nearest_neighbour_is_the_twin_and_only_train_tokens_count():
    aug = _augmenter(AugmentConfig(neighbours=1))
    for token in range(2, VOCAB):
        assert aug.neighbours[token, 0] == token ^ 1  # its near-duplicate
    assert (aug.neighbours[list(SPECIAL)] == -1).all()  # specials are never replaced
    seen = np.array([2, 4, 6, 8, 3])  # 3 is 2's twin; 4, 6, 8 lost theirs
    sparse = _augmenter(AugmentConfig(neighbours=2), train_ids=seen)
    assert sparse.neighbours[2, 0] == 3 and set(sparse.neighbours[seen].ravel()) <= set(seen.tolist())
    assert (sparse.neighbours[5] == -1).all()  # not in train: no neighbours computed


def test_chunking_does_not_change_neighbours():
    cfg = AugmentConfig(neighbours=4)
    assert np.array_equal(_augmenter(cfg, chunk_size=3).neighbours, _augmenter(cfg).neighbours)


def test_special_tokens_are_never_changed_moved_or_inserted():
    ids = np.array([1, 5, 6, 0, 7, 8, 1, 9], dtype=np.int32)
    everything = _augmenter(AugmentConfig(replace_prob=1.0, delete_prob=0.0, swap_prob=0.0))
    out = everything.augment_example(ids, example_id=3, copy=1)[0]
    assert len(out) == len(ids)
    special = np.isin(ids, SPECIAL)
    assert np.array_equal(out[special], ids[special])  # same tokens at the same places
    assert not np.isin(out[~special], SPECIAL).any() and (out[~special] != ids[~special]).all()
    swaps = _augmenter(AugmentConfig(replace_prob=0.0, delete_prob=0.0, swap_prob=1.0))
    out = swaps.augment_example(ids, example_id=3, copy=1)[0]
    assert np.array_equal(out[special], ids[special]) and sorted(out) == sorted(ids)
    deletes = _augmenter(AugmentConfig(replace_prob=0.0, delete_prob=1.0, swap_prob=0.0))
    assert deletes.augment_example(ids, example_id=3, copy=1)[0].tolist() == [1, 0, 1]
    assert len(deletes.augment_example(np.array([5, 6]), example_id=0, copy=1)[0]) == 1  # one token kept


@pytest.mark.parametrize("seed", [0, 1])
def test_output_depends_only_on_seed_example_and_copy(seed):
    cfg = AugmentConfig(seed=seed, replace_prob=0.3, delete_prob=0.1, swap_prob=0.1)
    rng = np.random.default_rng(123)
    examples = {i: rng.integers(2, VOCAB, size=rng.integers(3, 20)).astype(np.int32) for i in range(50)}
    one, other = _augmenter(cfg), _augmenter(cfg, chunk_size=7)  # e.g. two actors
    forward = {(i, c): one.augment_example(x, x[::-1], example_id=i, copy=c) for i, x in examples.items()
               for c in (1, 2)}
    for (i, c), (a, b) in reversed(list(forward.items())):  # another order, another instance
        a2, b2 = other.augment_example(examples[i], examples[i][::-1], example_id=i, copy=c)
        assert np.array_equal(a, a2) and np.array_equal(b, b2)
    changed = sum(not np.array_equal(a, examples[i]) for (i, _), (a, _) in forward.items())
    assert changed > 0.8 * len(forward)
    differ = sum(not np.array_equal(forward[i, 1][0], forward[i, 2][0]) for i in examples)
    assert differ > 0.8 * len(examples)  # copies differ from each other
    assert all(len(a) <= len(examples[i]) for (i, _), (a, _) in forward.items())
    reseeded = _augmenter(cfg.model_copy(update={"seed": seed + 10}))
    assert any(not np.array_equal(reseeded.augment_example(x, example_id=i, copy=1)[0], forward[i, 1][0])
               for i, x in examples.items())


def test_train_ids_outside_the_vocabulary_are_rejected():
    with pytest.raises(ValueError, match="outside the teacher's vocabulary"):
        _augmenter(AugmentConfig(), train_ids=np.array([3, VOCAB + 5]))
