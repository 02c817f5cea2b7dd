"""Candidate students scored with the supernet's inherited weights: the cheap first fidelity.

A search ends with a pool of genotypes (alpha's argmax and draws from alpha and the depth
logits, plus a few drawn uniformly so the screen can tell when the search loses to chance); each
is scored on search_valid along its own path through the trained supernet, in the task's metric.
Short KD retrains of the best few are the next fidelity (orchestrator/).
"""

from __future__ import annotations

from typing import Any

import torch

from search_space.config import SearchSpaceConfig
from search_space.cost import genotype_params_flops
from search_space.genotype import Genotype, random_genotype, sample_genotypes
from search_space.supernet import Supernet, genotype_weights
from workers.dataset import TargetSplit
from workers.metrics import task_score


@torch.no_grad()
def inherited_scores(
    model: Supernet, genotype: Genotype, split: TargetSplit, *, metric: str, batch_size: int, device: torch.device
) -> list[float]:
    """The task score of the genotype's path at every depth 1..genotype.depth (one pass)."""
    was_training = model.training
    model.eval()
    weights = genotype_weights(genotype, primitives=model.space.primitives).to(device)  # (E, n_ops)
    predictions = []
    for batch in split.batches(batch_size=batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b"), op_weights=weights,
                    depth=genotype.depth)
        predictions.append(out.logits_by_depth.argmax(dim=-1).cpu())  # (K, B)
    model.train(was_training)
    by_depth = torch.cat(predictions, dim=1)  # (K, N)
    return [task_score(p, split.labels, num_labels=model.num_labels, metric=metric) for p in by_depth]


def candidate_pool(
    model: Supernet, *, space: SearchSpaceConfig, valid: TargetSplit, metric: str, count: int, random: int,
    seed: int, stream: int = 0, seq_len: int, batch_size: int, device: torch.device,
) -> list[dict[str, Any]]:
    """Up to `count` genotypes from alpha, best inherited score first (ties: fewer FLOPs), then `random`
    genotypes drawn uniformly from the space (random search's draws, scored the same way), from
    their own generator: (`seed`, `stream`) fixes them, whatever alpha learned.

    Each: {"genotype" (JSON), "score", "params", "flops", "source": "alpha" | "random"}.
    """
    generator = torch.Generator().manual_seed(seed)
    from_alpha = sample_genotypes(model.alpha, model.depth_logits, count=count, generator=generator,
                                  primitives=space.primitives)
    uniform_generator = torch.Generator().manual_seed((seed << 20) + stream)
    uniform = [random_genotype(num_nodes=space.num_nodes, k_max=space.k_max, generator=uniform_generator,
                               primitives=space.primitives) for _ in range(random)]

    def row(genotype: Genotype, source: str) -> dict[str, Any]:
        score = inherited_scores(model, genotype, valid, metric=metric, batch_size=batch_size, device=device)[-1]
        params, flops = genotype_params_flops(genotype, space=space, seq_len=seq_len, vocab_size=model.vocab_size,
                                              num_labels=model.num_labels)
        return {"genotype": genotype.to_json(), "score": score, "params": params, "flops": flops, "source": source}

    ranked = sorted((row(g, "alpha") for g in from_alpha), key=lambda r: (-r["score"], r["flops"]))
    return ranked + [row(g, "random") for g in uniform]
