"""Early exit (FastBERT) for a retrained student: the exit threshold's curve on a split, and the
threshold a student ships with (`ProbedStack.early_exit` does the inference)."""

from __future__ import annotations

import time
from typing import Any

import torch

from search_space.layers import ProbedStack
from workers.dataset import TargetSplit
from workers.metrics import task_score

# Normalised probe entropies below which an example stops; 0 runs every cell (the full model). Dense
# near 1: on rotten_tomatoes (2 classes) the hand cell's exits agreed with the full model on every dev
# text up to 0.8 (1.97 cells run of 3) and on 99.9% at 0.95 (1.48 cells).
THRESHOLDS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)


@torch.inference_mode()
def exit_curve(model: ProbedStack, split: TargetSplit, *, metric: str, thresholds: tuple[float, ...] = THRESHOLDS,
               batch_size: int = 128) -> list[dict[str, float]]:
    """Per threshold: the split's score in `metric` and the mean number of cells run."""
    was_training = model.training
    model.eval()
    curve = []
    for threshold in thresholds:
        predictions, cells = [], []
        for batch in split.batches(batch_size=batch_size):
            logits, run = model.early_exit(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b"),
                                           threshold=threshold)
            predictions.append(logits.argmax(dim=-1))
            cells.append(run)
        score = task_score(torch.cat(predictions), split.labels, num_labels=model.num_labels, metric=metric)
        curve.append({"threshold": threshold, "score": score, "mean_cells": float(torch.cat(cells).float().mean())})
    model.train(was_training)
    return curve


def pick_threshold(curve: list[dict[str, float]], *, max_drop: float) -> float:
    """The threshold that runs the fewest cells while scoring within `max_drop` of the full model
    (threshold 0); the smaller threshold on a tie."""
    full = next(p["score"] for p in curve if p["threshold"] == 0)
    fine = [p for p in curve if p["score"] >= full - max_drop - 1e-12]
    return min(fine, key=lambda p: (p["mean_cells"], p["threshold"]))["threshold"]


@torch.inference_mode()
def exit_latency_b1(model: ProbedStack, split: TargetSplit, *, threshold: float, examples: int = 200,
                    warmup: int = 10) -> dict[str, Any]:
    """Mean ms per example at batch 1 over the split's first `examples` real examples (their own
    lengths: exits depend on the text), after `warmup` untimed calls."""
    model.eval()
    rows = [b for _, b in zip(range(examples + warmup), split.batches(batch_size=1), strict=False)]
    calls = [(b["ids_a"], b["mask_a"], b.get("ids_b"), b.get("mask_b")) for b in rows]
    for args in calls[:warmup]:
        model.early_exit(*args, threshold=threshold)
    started = time.perf_counter()
    for args in calls[warmup:]:
        model.early_exit(*args, threshold=threshold)
    return {"threshold": threshold, "mean_b1_ms": (time.perf_counter() - started) * 1e3 / max(1, len(calls) - warmup)}
