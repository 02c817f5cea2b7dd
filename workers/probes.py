"""Linear probes on the teacher's layers: one per layer (embedding output + each hidden layer).

The teacher stays frozen: its mean-pooled states are computed once, then all probes train
together as one batched linear layer. Their dev scores (the task's metric) say how much of the task each layer
already knows; the search uses the probes' logits as per-layer hints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from workers.metrics import task_score

PROBES_FILE = "probes.safetensors"
PROBES_JSON = "probes.json"


def pool_layers(hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of every layer: L+1 tensors (B, T, H), mask (B, T) -> (B, L+1, H)."""
    states = torch.stack(hidden_states, dim=1)  # (B, P, T, H)
    m = attention_mask.to(states.dtype)[:, None, :, None]  # (B, 1, T, 1)
    return (states * m).sum(dim=2) / m.sum(dim=2).clamp_min(1.0)


class LayerProbes(nn.Module):
    """P affine probes applied at once; features are standardised per layer (train statistics),
    which makes one learning rate fit layers whose states have very different scales."""

    def __init__(self, num_probes: int, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_probes, hidden_size, num_labels))  # (P, H, C)
        self.bias = nn.Parameter(torch.zeros(num_probes, num_labels))  # (P, C)
        self.register_buffer("mean", torch.zeros(num_probes, hidden_size))  # (P, H)
        self.register_buffer("std", torch.ones(num_probes, hidden_size))  # (P, H)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, P, H) -> (B, P, C)."""
        x = (pooled.to(self.weight.dtype) - self.mean) / self.std
        return torch.einsum("bph,phc->bpc", x, self.weight) + self.bias


def train_probes(
    features: torch.Tensor, labels: torch.Tensor, *, num_labels: int, epochs: int, lr: float, seed: int,
    batch_size: int = 256,
) -> LayerProbes:
    """features (N, P, H) float, labels (N,) -> trained probes (Adam, cross-entropy summed over layers)."""
    features = features.float()
    probes = LayerProbes(features.shape[1], features.shape[2], num_labels)
    probes.mean.copy_(features.mean(dim=0))
    probes.std.copy_(features.std(dim=0).clamp_min(1e-6))
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(probes.parameters(), lr=lr)
    n = len(labels)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            logits = probes(features[idx])  # (B, P, C)
            target = labels[idx][:, None].expand(-1, logits.shape[1])  # (B, P)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probes.eval().requires_grad_(False)


@torch.inference_mode()
def probe_scores(probes: LayerProbes, features: torch.Tensor, labels: torch.Tensor, *, num_labels: int,
                 metric: str) -> list[float]:
    """Each probe's score in the task's metric: features (N, P, H), labels (N,) -> P floats."""
    pred = probes(features).argmax(dim=-1)  # (N, P)
    return [task_score(pred[:, p], labels, num_labels=num_labels, metric=metric) for p in range(pred.shape[1])]


def save_probes(probes: LayerProbes, folder: Path) -> None:
    save_file({k: v.contiguous() for k, v in probes.state_dict().items()}, str(folder / PROBES_FILE))


def load_probes(folder: Path) -> LayerProbes:
    state = load_file(str(Path(folder) / PROBES_FILE))
    probes = LayerProbes(*state["weight"].shape)
    probes.load_state_dict(state)
    return probes.eval().requires_grad_(False)


def layer_names(num_probes: int) -> list[str]:
    return ["embeddings"] + [f"layer {i}" for i in range(1, num_probes)]


def write_probe_scores(folder: Path, scores: list[float], *, metric: str, teacher_score: float) -> None:
    """probes.json in the teacher folder: each layer's probe and the teacher's head, in the task's metric
    (orchestrator/plots.py draws it)."""
    (folder / PROBES_JSON).write_text(json.dumps(
        {"layers": layer_names(len(scores)), "metric": metric, "dev_scores": scores, "teacher_dev_score": teacher_score},
        indent=2,
    ))
