"""AdaBERT-style data augmentation on token ids (no text needed).

Each non-special token is replaced, with probability `replace_prob`, by one of its `neighbours`
nearest tokens in the teacher's word-embedding space (cosine); then tokens are deleted with
`delete_prob` and adjacent tokens swapped with `swap_prob`. Special tokens are never changed,
moved or used as replacements. Neighbours are computed only among the tokens that occur in the
training data, in chunks, so memory stays at chunk x vocabulary-in-use.

An augmented example depends only on (seed, example id, copy index), never on which actor or
shard produced it. Augmented examples carry no gold label: the teacher's logits label them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from workers.config import AugmentConfig


@dataclass(frozen=True)
class Augmenter:
    neighbours: np.ndarray  # (V, k) int32; row -1 for tokens never replaced
    protected: np.ndarray  # (V,) bool: special tokens
    cfg: AugmentConfig

    def augment_example(
        self, ids_a: np.ndarray, ids_b: np.ndarray | None = None, *, example_id: int, copy: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Copy `copy` (>= 1) of one example: new id arrays (never longer than the originals)."""
        rng = np.random.default_rng([self.cfg.seed, int(example_id) % 2**63, int(copy)])
        new_a = self.augment(ids_a, rng=rng)
        return new_a, None if ids_b is None else self.augment(ids_b, rng=rng)

    def augment(self, ids: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int32)
        n = len(ids)
        # Draw a fixed number of values per token, so each decision uses the same stream position.
        u_replace, u_choice, u_delete, u_swap = rng.random((4, n))
        special = self.protected[ids]
        candidates = self.neighbours[ids]  # (n, k)
        out = ids.copy()
        replace = (u_replace < self.cfg.replace_prob) & (candidates[:, 0] >= 0) & ~special
        pick = (u_choice * candidates.shape[1]).astype(np.int64)
        out[replace] = candidates[replace, pick[replace]]
        delete = (u_delete < self.cfg.delete_prob) & ~special
        if delete.all():  # keep at least one token
            delete[0] = False
        out, u_swap, special = out[~delete], u_swap[~delete], special[~delete]
        i = 0
        while i < len(out) - 1:
            if u_swap[i] < self.cfg.swap_prob and not (special[i] or special[i + 1]):
                out[i], out[i + 1] = out[i + 1], out[i]
                i += 2  # a token moves at most once
            else:
                i += 1
        return out


def build_augmenter(
    embeddings: torch.Tensor, *, train_ids: np.ndarray, special_ids: Iterable[int], cfg: AugmentConfig,
    chunk_size: int = 1024,
) -> Augmenter:
    """Nearest neighbours (cosine) among the non-special tokens that occur in `train_ids`.

    embeddings: the teacher's word embeddings (V, H); train_ids: every token id of the training
    examples (any shape, e.g. the flat values of the ids column).
    """
    vocab_size = embeddings.shape[0]
    protected = np.zeros(vocab_size, dtype=bool)
    protected[[i for i in special_ids if 0 <= i < vocab_size]] = True
    vocab = np.unique(np.asarray(train_ids, dtype=np.int64))
    if len(vocab) and (vocab[0] < 0 or vocab[-1] >= vocab_size):
        raise ValueError(f"train ids outside the teacher's vocabulary of {vocab_size} tokens")
    vocab = vocab[~protected[vocab]]  # (U,)
    k = min(cfg.neighbours, len(vocab) - 1)
    neighbours = np.full((vocab_size, max(k, 1)), -1, dtype=np.int32)
    if k > 0:
        table = torch.nn.functional.normalize(embeddings[torch.from_numpy(vocab)].float(), dim=1)  # (U, H)
        for start in range(0, len(vocab), chunk_size):
            sims = table[start:start + chunk_size] @ table.T  # (c, U)
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -float("inf")  # a token is not its own neighbour
            top = sims.topk(k, dim=1).indices.numpy()  # (c, k)
            neighbours[vocab[start:start + chunk_size]] = vocab[top]
    return Augmenter(neighbours=neighbours, protected=protected, cfg=cfg)
