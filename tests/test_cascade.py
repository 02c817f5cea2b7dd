"""A cascade hands the back only the rows the front is unsure of, its threshold defers the share asked, and the
job pairs the budget's pick with the best other student."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config import CascadeConfig
from orchestrator.selection import Candidate, cascade_pair
from search_space.layers import StudentOutput
from workers.cascade import CascadeModel, cascade_logits, defer_threshold


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


def test_a_cascade_model_answers_as_cascade_logits_and_passes_pairs_through():
    class Fixed:  # a student's call: inputs in, `.logits` out
        pad_id = 0

        def __init__(self, weight):
            self.weight, self.seen = weight, []

        def __call__(self, ids_a, mask_a, ids_b=None, mask_b=None):
            self.seen.append(ids_b is None or len(ids_b) == len(ids_a))
            return StudentOutput(logits=(ids_a.float().mean(-1, keepdim=True) - 25) * self.weight)  # (B, C)

    front, back = Fixed(torch.tensor([0.1, -0.1])), Fixed(torch.tensor([-1.0, 1.0]))
    ids = torch.tensor([1, 10, 20, 24, 26, 30, 40, 50])[:, None].repeat(1, 5)  # (B, T): sure at the ends
    mask = torch.ones_like(ids, dtype=torch.bool)
    model = CascadeModel(front, back, threshold=0.9)
    want, deferred = cascade_logits(lambda *x: front(*x).logits, lambda *x: back(*x).logits, ids, mask, ids, mask,
                                    threshold=0.9)
    assert deferred.tolist() == [False, False, True, True, True, True, False, False]
    assert torch.equal(model(ids, mask, ids, mask).logits, want)
    assert all(front.seen) and all(back.seen) and model.pad_id == 0


def _candidate(key, score, latency, *, origin="", speedup=None):
    return Candidate(key=key, config_number=None, genotype="", score=score, latency_ms=latency,
                     latency_p95_ms=latency, params=1, speedup=speedup, origin=origin or key)


def test_the_back_is_the_best_other_student_at_its_fastest_runtime():
    front = _candidate("cell-int8", 0.78, 0.5, origin="cell", speedup=20)
    others = [front, _candidate("cell", 0.79, 1.0, speedup=10),  # the front's own torch parent: never its back
              _candidate("l3", 0.813, 9.0, speedup=1.4), _candidate("l3-int8", 0.812, 3.0, origin="l3", speedup=3.3),
              _candidate("l2", 0.80, 2.0, speedup=5)]
    assert cascade_pair(others, front=front) == (front, others[3])
    assert cascade_pair([front, _candidate("worse", 0.70, 0.1)], front=front) is None
    assert cascade_pair([front], front=front) is None


def test_the_front_is_the_budgets_pick_at_its_fastest_runtime():
    pick = _candidate("cell", 0.7904, 1.70, speedup=10.9)  # the budget's pick: its int8 graph scored one text less
    graph = _candidate("cell-int8", 0.7894, 0.67, origin="cell", speedup=19.9)
    back = _candidate("l3-int8", 0.8019, 2.69, origin="l3", speedup=4.8)
    assert cascade_pair([pick, graph, back], front=pick) == (graph, back)
    l2 = _candidate("l2", 0.79, 2.0, speedup=5)  # below the pick, above the front that runs: a back worth having
    assert cascade_pair([pick, graph, l2], front=pick) == (graph, l2)


@pytest.mark.parametrize(("defer", "error"), [([0.0], "between 0 and 1"), ([1.0], "between 0 and 1"),
                                              ([0.1, 0.1], "twice")])
def test_a_share_the_job_cannot_defer_is_refused_in_one_line(defer, error):
    with pytest.raises(ValueError, match=error):
        CascadeConfig(defer=defer)
    assert CascadeConfig(defer=[0.05, 0.1]).defer == [0.05, 0.1]
