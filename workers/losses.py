"""The AdaBERT losses as pure functions: gold CE, KD (soft logits + attentive probe hints), total.

L = (1 - gamma) * CE(gold) + gamma * L_KD + beta * L_E. The search and the retraining of a
derived student share these, so both optimise the same objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.splits import NO_LABEL


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher / T) || softmax(student / T)), times T^2.

    This is the soft cross-entropy minus the teacher's entropy: the same gradient for the
    student, but 0 for a perfect copy whichever target it copies. That matters to the search:
    with the soft CE, a deep student whose cells match early, unsure teacher layers would pay
    those layers' entropy and lose to a shallow one however well it copies them. The T^2 keeps
    the gradient's scale independent of T (Hinton et al.); at T = 1 and a one-hot teacher this
    is the ordinary cross-entropy. Logits (..., C) -> scalar.
    """
    return _kl_rows(student_logits, teacher_logits, temperature=temperature).mean()


def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_target = (teacher_logits / temperature).log_softmax(dim=-1)  # (..., C)
    log_probs = (student_logits / temperature).log_softmax(dim=-1)  # (..., C)
    kl = F.kl_div(log_probs, log_target, reduction="none", log_target=True)  # (..., C)
    return kl.sum(dim=-1) * temperature**2  # (...)


def _labels_or_teacher(labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Gold labels, with the teacher's argmax where only the teacher labels a row (augmented)."""
    return torch.where(labels == NO_LABEL, teacher_logits.argmax(dim=-1), labels)  # (B,)


def probe_layer_weights(
    teacher_probe_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """Per-example attention over teacher layers: softmax over layers of -CE(probe, label).

    teacher_probe_logits (B, L+1, C), labels (B,), teacher_logits (B, C) -> (B, L+1); a layer
    whose probe already predicts the example well gets more weight (AdaBERT, eq. 4).
    """
    target = _labels_or_teacher(labels, teacher_logits)  # (B,)
    layers = teacher_probe_logits.shape[1]
    ce = F.cross_entropy(
        teacher_probe_logits.flatten(0, 1), target.repeat_interleave(layers), reduction="none"
    ).view(-1, layers)  # (B, L+1)
    return (-ce).softmax(dim=-1)


def matched_layers(num_cells: int, num_layers: int) -> list[int]:
    """Teacher probe index for each student cell: cell i of K (1-based) -> layer ceil(i * L / K)."""
    if num_cells < 1 or num_layers < 1:
        raise ValueError(f"need cells >= 1 and layers >= 1, got {num_cells}, {num_layers}")
    return [-(-i * num_layers // num_cells) for i in range(1, num_cells + 1)]  # integer ceil


def hint_terms(
    student_probes: list[torch.Tensor],
    teacher_probe_logits: torch.Tensor,
    layer_weights: torch.Tensor,
    *,
    temperature: float,
    layers: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each student cell's probe (B, C) against its matched teacher layer `layers[i]`.

    teacher_probe_logits (B, L+1, C) with index 0 = embeddings, j = hidden layer j;
    layer_weights (B, L+1) from `probe_layer_weights`. Returns the per-cell KL (B, K) and the
    matched layers' attentive weights (B, K), not yet renormalised.
    """
    index = torch.tensor(layers, device=teacher_probe_logits.device)
    per_cell = torch.stack(
        [_kl_rows(probe, teacher_probe_logits[:, layer], temperature=temperature)
         for probe, layer in zip(student_probes, layers, strict=True)],
        dim=-1,
    )  # (B, K)
    return per_cell, layer_weights[:, index]


def prefix_hint_losses(per_cell: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(K,) hint loss of the first k cells, k = 1..K: the attentive mean over those cells, renormalised
    per example, then the mean over the batch. per_cell, weights (B, K)."""
    tiny = torch.finfo(weights.dtype).tiny
    return ((weights * per_cell).cumsum(dim=-1) / weights.cumsum(dim=-1).clamp_min(tiny)).mean(dim=0)


def hint_loss(
    student_probes: list[torch.Tensor],
    teacher_probe_logits: torch.Tensor,
    layer_weights: torch.Tensor,
    *,
    temperature: float,
) -> torch.Tensor:
    """Probe hints of a K-cell student, cell i matched to teacher layer ceil(i * L / K): a scalar
    (0 when the student has no probes)."""
    if not student_probes:
        return teacher_probe_logits.new_zeros(())
    layers = matched_layers(len(student_probes), teacher_probe_logits.shape[1] - 1)
    per_cell, weights = hint_terms(student_probes, teacher_probe_logits, layer_weights, temperature=temperature,
                                   layers=layers)
    return prefix_hint_losses(per_cell, weights)[-1]


def kd_loss(
    student_logits: torch.Tensor,
    *,
    student_probes: list[torch.Tensor],
    teacher_logits: torch.Tensor,
    teacher_probe_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """L_KD = soft KL on the final logits + attentive probe hints (none without teacher probes)."""
    loss = soft_kl(student_logits, teacher_logits, temperature=temperature)
    if teacher_probe_logits is None:
        return loss
    weights = probe_layer_weights(teacher_probe_logits, labels, teacher_logits)  # (B, L+1)
    return loss + hint_loss(student_probes, teacher_probe_logits, weights, temperature=temperature)


def gold_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the rows with a gold label; 0 (still in the graph) when there is none."""
    keep = labels != NO_LABEL  # (B,)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], labels[keep])


def adabert_loss(
    *, ce: torch.Tensor, kd: torch.Tensor, eff: torch.Tensor | float, gamma: float, beta: float
) -> torch.Tensor:
    return (1.0 - gamma) * ce + gamma * kd + beta * eff


def depth_losses(
    logits_by_depth: torch.Tensor,
    *,
    cell_probes: list[torch.Tensor],
    batch: dict[str, torch.Tensor],
    gamma: float,
    temperature: float,
    k_max: int,
) -> dict[str, torch.Tensor]:
    """The task loss (1 - gamma) * CE + gamma * KD of the supernet's head at every depth k = 1..K.

    logits_by_depth (K, B, C); cell_probes K tensors (B, C). Cell i is matched to teacher layer
    ceil(i * L / k_max) whatever depth is scored, so the shared cells and probes chase one target
    each. Returns {"ce", "kd", "task"}, each (K,).
    """
    labels, teacher_logits = batch["labels"], batch["teacher_logits"]
    ce = torch.stack([gold_ce(logits, labels) for logits in logits_by_depth])  # (K,)
    kd = torch.stack([soft_kl(logits, teacher_logits, temperature=temperature) for logits in logits_by_depth])
    teacher_probes = batch.get("probe_logits")
    if teacher_probes is not None and cell_probes:
        layers = matched_layers(k_max, teacher_probes.shape[1] - 1)[: len(cell_probes)]
        weights = probe_layer_weights(teacher_probes, labels, teacher_logits)  # (B, L+1)
        per_cell, cell_weights = hint_terms(cell_probes, teacher_probes, weights, temperature=temperature,
                                            layers=layers)
        kd = kd + prefix_hint_losses(per_cell, cell_weights)
    return {"ce": ce, "kd": kd, "task": adabert_loss(ce=ce, kd=kd, eff=0.0, gamma=gamma, beta=0.0)}
