import math

import pytest
import torch
import torch.nn.functional as F

from workers.losses import (
    adabert_loss,
    gold_ce,
    hint_loss,
    kd_loss,
    matched_layers,
    probe_layer_weights,
    soft_kl,
)
from workers.splits import NO_LABEL


def test_soft_kl_is_ce_for_a_one_hot_teacher():
    student = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.0, -0.5]])
    labels = torch.tensor([2, 0])
    one_hot_teacher = 1e4 * F.one_hot(labels, 3).float()  # softmax is exactly one-hot in float32
    assert soft_kl(student, one_hot_teacher, temperature=1.0).item() == pytest.approx(
        F.cross_entropy(student, labels).item(), abs=1e-6)
    # at T = 2 it is T^2 times the CE of the softened student
    assert soft_kl(student, one_hot_teacher, temperature=2.0).item() == pytest.approx(
        4 * F.cross_entropy(student / 2, labels).item(), abs=1e-5)


def test_soft_kl_hand_value():
    # uniform teacher, student probabilities (1/4, 3/4): (ln(2) + ln(1/2 / 3/4)) / 2
    value = soft_kl(torch.tensor([[0.0, math.log(3.0)]]), torch.zeros(1, 2), temperature=1.0)
    assert value.item() == pytest.approx((math.log(0.5 / 0.25) + math.log(0.5 / 0.75)) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        soft_kl(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)


def test_soft_kl_is_zero_for_a_copy_and_has_the_soft_ce_gradient():
    teacher = torch.tensor([[0.2, 0.1, -0.3], [2.0, -1.0, 0.0]])  # unsure rows: entropy well above 0
    assert soft_kl(teacher.clone(), teacher, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[1.0, -0.5, 0.3], [0.0, 0.4, -1.0]], requires_grad=True)
    (grad_kl,) = torch.autograd.grad(soft_kl(student, teacher, temperature=2.0), student)
    soft_ce = -(teacher.div(2).softmax(-1) * student.div(2).log_softmax(-1)).sum(-1).mean() * 4
    (grad_ce,) = torch.autograd.grad(soft_ce, student)
    assert torch.allclose(grad_kl, grad_ce, atol=1e-6)


@pytest.mark.parametrize(
    ("cells", "layers", "expected"),
    [(3, 6, [2, 4, 6]), (4, 6, [2, 3, 5, 6]), (1, 6, [6]), (6, 6, [1, 2, 3, 4, 5, 6]),
     (8, 6, [1, 2, 3, 3, 4, 5, 6, 6]), (2, 12, [6, 12])],
)
def test_cell_i_of_k_matches_layer_ceil_i_l_over_k(cells, layers, expected):
    assert matched_layers(cells, layers) == expected
    assert matched_layers(cells, layers) == [math.ceil(i * layers / cells) for i in range(1, cells + 1)]


def test_probe_layer_weights_sum_to_one_and_favour_the_right_probe():
    # 2 examples, 3 probes (embeddings + 2 layers), 2 classes; layer 2 is right, the embeddings wrong.
    probes = torch.tensor([[[2.0, -2.0], [0.0, 0.0], [-3.0, 3.0]],
                           [[2.0, -2.0], [0.0, 0.0], [-3.0, 3.0]]])
    teacher = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    weights = probe_layer_weights(probes, torch.tensor([1, NO_LABEL]), teacher)
    assert weights.shape == (2, 3)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2))
    assert weights[0].argmax() == 2 and weights[0].argmin() == 0
    # the unlabelled row takes the teacher's argmax (class 1) as its label: same weights as row 0
    torch.testing.assert_close(weights[1], weights[0])
    # hand value: softmax over layers of -CE
    ce = torch.stack([F.cross_entropy(probes[0, j:j + 1], torch.tensor([1])) for j in range(3)])
    torch.testing.assert_close(weights[0], (-ce).softmax(dim=0))


def test_hint_loss_weights_matched_layers_renormalised():
    torch.manual_seed(0)
    teacher_probes = torch.randn(4, 5, 3)  # B=4, L=4 hidden layers + embeddings, C=3
    student = [torch.randn(4, 3), torch.randn(4, 3)]  # K=2 -> layers 2 and 4
    layer_weights = torch.tensor([[0.1, 0.1, 0.3, 0.2, 0.3]]).repeat(4, 1)
    value = hint_loss(student, teacher_probes, layer_weights, temperature=1.0)
    # renormalised over the matched layers {2, 4}: 0.3 / 0.6 each
    expected = 0.5 * soft_kl(student[0], teacher_probes[:, 2], temperature=1.0) + \
        0.5 * soft_kl(student[1], teacher_probes[:, 4], temperature=1.0)
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)

    # per-example weights: row 0 trusts layer 2 only, so its hint is layer 2's CE alone
    skewed = layer_weights.clone()
    skewed[0] = torch.tensor([0.2, 0.2, 0.6, 0.0, 0.0])
    rows = hint_loss([s[:1] for s in student], teacher_probes[:1], skewed[:1], temperature=1.0)
    assert rows.item() == pytest.approx(soft_kl(student[0][:1], teacher_probes[:1, 2],
                                                           temperature=1.0).item(), abs=1e-6)


def test_hint_loss_is_smallest_when_each_cell_copies_its_matched_layer():
    teacher_probes = 4 * torch.randn(8, 7, 2, generator=torch.Generator().manual_seed(1))  # L = 6
    weights = torch.full((8, 7), 1 / 7)
    matched = [teacher_probes[:, j] for j in (2, 4, 6)]  # K = 3
    shifted = [teacher_probes[:, j] for j in (1, 3, 5)]
    assert hint_loss(matched, teacher_probes, weights, temperature=1.0) < \
        hint_loss(shifted, teacher_probes, weights, temperature=1.0)
    assert hint_loss([], teacher_probes, weights, temperature=1.0).item() == 0.0


def test_kd_loss_is_soft_logits_plus_hints():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    probes, teacher_probes = [torch.randn(3, 2, generator=g)], torch.randn(3, 4, 2, generator=g)
    labels = torch.tensor([0, NO_LABEL, 1])
    weights = probe_layer_weights(teacher_probes, labels, teacher)
    expected = soft_kl(student, teacher, temperature=2.0) + hint_loss(
        probes, teacher_probes, weights, temperature=2.0)
    got = kd_loss(student, student_probes=probes, teacher_logits=teacher, teacher_probe_logits=teacher_probes,
                  labels=labels, temperature=2.0)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    without_probes = kd_loss(student, student_probes=probes, teacher_logits=teacher, teacher_probe_logits=None,
                             labels=labels, temperature=2.0)
    assert without_probes.item() == pytest.approx(soft_kl(student, teacher, temperature=2.0).item())


def test_gold_ce_ignores_unlabelled_rows():
    logits = torch.tensor([[2.0, 0.0], [-5.0, 5.0], [0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, NO_LABEL, 1])
    expected = F.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert gold_ce(logits, labels).item() == pytest.approx(expected.item())
    none = gold_ce(logits, torch.full((3,), NO_LABEL))
    assert none.item() == 0.0
    none.backward()  # still part of the graph
    assert torch.count_nonzero(logits.grad) == 0


def test_adabert_loss_combines_the_terms():
    value = adabert_loss(ce=torch.tensor(1.0), kd=torch.tensor(2.0), eff=torch.tensor(0.5), gamma=0.8, beta=4.0)
    assert value.item() == pytest.approx(0.2 * 1.0 + 0.8 * 2.0 + 4.0 * 0.5)
