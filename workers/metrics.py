"""The task's score: accuracy or macro-F1, computed one way for the teacher, the search and every student."""

from __future__ import annotations

import torch

METRICS = ("accuracy", "f1_macro")
METRIC_NAMES = {"accuracy": "accuracy", "f1_macro": "macro-F1"}


def classification_scores(predictions: torch.Tensor, labels: torch.Tensor, *, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (a class never predicted nor present scores 0, as scikit-learn's default)."""
    accuracy = float((predictions == labels).float().mean())
    f1s = []
    for c in range(num_labels):
        tp = int(((predictions == c) & (labels == c)).sum())
        fp = int(((predictions == c) & (labels != c)).sum())
        fn = int(((predictions != c) & (labels == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": accuracy, "f1_macro": sum(f1s) / num_labels}


def split_scores(split: str, scores: dict[str, float], *, metric: str) -> dict[str, float]:
    """A split's `classification_scores` as a student's metrics.json holds them: {split}_acc, _f1_macro and
    _metric (the task's one score)."""
    return {f"{split}_acc": scores["accuracy"], f"{split}_f1_macro": scores["f1_macro"], f"{split}_metric": scores[metric]}


def task_score(predictions: torch.Tensor, labels: torch.Tensor, *, num_labels: int, metric: str) -> float:
    """The one score of a task, `metric` of METRICS."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return classification_scores(predictions, labels, num_labels=num_labels)[metric]


def majority_score(labels: torch.Tensor, *, num_labels: int, metric: str) -> float:
    """The task score of always predicting the most frequent label of `labels`: the bar every
    teacher and student must clear."""
    majority = int(torch.bincount(labels, minlength=num_labels).argmax())
    return task_score(torch.full_like(labels, majority), labels, num_labels=num_labels, metric=metric)
