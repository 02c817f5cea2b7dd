"""A cascade hands the back only the rows the front is unsure of, and its threshold defers the share asked."""

from __future__ import annotations

import pytest
import torch

from workers.cascade import cascade_logits, defer_threshold


@pytest.mark.parametrize("defer", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_the_threshold_defers_the_share_asked_of_the_split_it_was_set_on(defer):
    probs = torch.rand(1000, 3, generator=torch.Generator().manual_seed(0)).softmax(dim=-1)  # (N, C)
    threshold = defer_threshold(probs, defer=defer)
    deferred = (probs.max(dim=-1).values < threshold).float().mean().item()
    assert deferred == pytest.approx(defer, abs=0.002)


@pytest.mark.parametrize("defer", [-0.1, 1.5])
def test_a_share_outside_0_1_is_refused(defer):
    with pytest.raises(ValueError, match="defer must lie in"):
        defer_threshold(torch.full((4, 2), 0.5), defer=defer)


@pytest.mark.parametrize("threshold", [0.0, 0.7, 1.01])
def test_the_back_sees_only_the_rows_the_front_is_unsure_of(threshold):
    # The front is sure of even rows (p = 0.9) and unsure of odd ones (p = 0.6); the back answers class 2.
    ids = torch.arange(6)[:, None].repeat(1, 5)  # (B, T): each row's id is its index
    mask = torch.ones_like(ids, dtype=torch.bool)
    sure = torch.tensor([0.9, 0.05, 0.05]).log()
    unsure = torch.tensor([0.6, 0.3, 0.1]).log()
    seen = []

    def front(ids, mask):
        return torch.stack([sure if i % 2 == 0 else unsure for i in ids[:, 0].tolist()])  # (B, 3)

    def back(ids, mask):
        seen.extend(ids[:, 0].tolist())
        return torch.tensor([[0.0, 0.0, 5.0]]).repeat(len(ids), 1)  # (b, 3)

    logits, deferred = cascade_logits(front, back, ids, mask, threshold=threshold)
    expected = [i for i in range(6) if (0.9 if i % 2 == 0 else 0.6) < threshold]
    assert seen == expected
    assert deferred.nonzero().flatten().tolist() == expected
    assert logits.argmax(dim=-1).tolist() == [2 if i in expected else 0 for i in range(6)]
