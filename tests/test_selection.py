import pytest

from orchestrator.config import BudgetConfig
from orchestrator.selection import Candidate, dominates, pareto_front, pick_champion, select


def cand(key, acc, lat, params, p95=None):
    return Candidate(key=key, config_number=0, genotype="{}", score=acc, latency_ms=lat,
                     latency_p95_ms=p95 if p95 is not None else lat * 1.2, params=params)


CANDS = [
    cand("big", 0.86, 8.0, 5_000_000),
    cand("mid", 0.84, 3.0, 2_000_000),
    cand("small", 0.80, 1.0, 800_000),
    cand("bad", 0.79, 4.0, 3_000_000),  # dominated by "mid"
    cand("tie", 0.84, 3.0, 2_500_000),  # dominated by "mid" (same acc and latency, more params)
]


def test_dominates_needs_one_strictly_better():
    assert dominates(CANDS[1], CANDS[3])
    assert not dominates(CANDS[1], CANDS[1])
    assert not dominates(CANDS[0], CANDS[2]) and not dominates(CANDS[2], CANDS[0])


def test_pareto_front_drops_dominated_and_sorts_by_accuracy():
    assert [c.key for c in pareto_front(CANDS)] == ["big", "mid", "small"]


@pytest.mark.parametrize(
    "budget, teacher, expected, met",
    [
        (BudgetConfig(), None, "big", True),
        (BudgetConfig(max_latency_ms=5.0), None, "mid", True),  # big's p95 is 9.6 ms
        (BudgetConfig(max_latency_ms=0.5), None, "small", False),  # nothing fits: the fastest, flagged
        (BudgetConfig(max_params=1_000_000), None, "small", True),
        (BudgetConfig(within_teacher_points=3.0), 0.86, "mid", True),  # smallest with acc >= 0.83
        (BudgetConfig(within_teacher_points=10.0), 0.86, "small", True),
        (BudgetConfig(within_teacher_points=0.1, max_latency_ms=5.0), 0.90, "small", False),  # fastest
    ],
)
def test_pick_champion_follows_the_budget(budget, teacher, expected, met):
    choice = pick_champion(pareto_front(CANDS), budget=budget, teacher_score=teacher)
    assert choice.champion.key == expected
    assert choice.met_budget is met
    assert choice.reason


def test_min_speedup_takes_the_best_student_fast_enough_at_both_batch_sizes():
    from dataclasses import replace

    from orchestrator.selection import speedup

    teacher = {"latency_b1_mean_ms": 20.0, "latency_b128_mean_ms": 1200.0}
    figures = {"big": (2.0, 200.0), "mid": (1.5, 110.0), "small": (0.5, 40.0)}  # big: 10x at b1, 6x at b128
    front = [replace(c, speedup=speedup({"latency_b1_mean_ms": figures[c.key][0], "latency_b128_mean_ms": figures[c.key][1]},
                                        teacher)) for c in pareto_front(CANDS)]
    assert [round(c.speedup, 2) for c in front] == [6.0, 10.91, 30.0]
    choice = pick_champion(front, budget=BudgetConfig(min_speedup=10), teacher_score=None)
    assert (choice.champion.key, choice.met_budget) == ("mid", True) and "10x faster" in choice.reason
    choice = pick_champion(front, budget=BudgetConfig(min_speedup=50), teacher_score=None)
    assert (choice.champion.key, choice.met_budget) == ("small", False)  # none fits: the fastest against the teacher
    with pytest.raises(ValueError, match="speed-up"):
        pick_champion(pareto_front(CANDS), budget=BudgetConfig(min_speedup=10), teacher_score=None)


def test_the_job_selects_among_every_candidate_not_only_the_front():
    """The front ranks the mean latency at batch 1; the budget also reads batch 128. "d040" is dominated at
    batch 1 by "d060", which misses 10x at batch 128: the budget takes d040, not the lower-scoring cell."""
    from dataclasses import replace

    cands = [replace(cand("cell", 0.7883, 0.83, 2_270_000), speedup=14.2),
             replace(cand("d060", 0.7998, 1.15, 12_967_000), speedup=9.1),
             replace(cand("d040", 0.7977, 1.15, 12_967_000), speedup=10.1)]
    front, choice = select(cands, budget=BudgetConfig(min_speedup=10), teacher_score=None)
    assert "d040" not in {c.key for c in front}
    assert (choice.champion.key, choice.met_budget) == ("d040", True)
    ties = [replace(c, speedup=20.0) for c in (cand("slow", 0.8, 2.0, 10), cand("fast", 0.8, 1.0, 10))]
    assert pick_champion(ties, budget=BudgetConfig(min_speedup=10), teacher_score=None).champion.key == "fast"


def test_pick_champion_needs_candidates():
    with pytest.raises(ValueError, match="no retrained students"):
        pick_champion([], budget=BudgetConfig(), teacher_score=None)


def test_the_pareto_plot_draws_each_route_with_its_own_marker(tmp_path):
    from dataclasses import replace

    from orchestrator.plots import pareto_plot

    cands = [replace(c, route="cells" if i % 2 else "cells, rank-32 table") for i, c in enumerate(CANDS)]
    front = pareto_front(cands)
    path = pareto_plot(cands, front, front[0], tmp_path / "pareto.png", teacher_score=0.8, teacher_latency_ms=20.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    assert not plt.get_fignums()  # closed after saving


def test_the_pareto_plot_draws_every_candidate_when_routes_outnumber_markers(tmp_path, monkeypatch):
    from dataclasses import replace

    import matplotlib.axes

    from orchestrator.plots import ROUTE_MARKERS, pareto_plot

    drawn: list[tuple[int, str]] = []
    scatter = matplotlib.axes.Axes.scatter

    def counting(self, x, y, *args, **kwargs):
        drawn.append((len(x), kwargs.get("label", "")))
        return scatter(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", counting)
    cands = [replace(CANDS[i % len(CANDS)], key=f"s{i}", route=f"route {i}") for i in range(len(ROUTE_MARKERS) + 2)]
    pareto_plot(cands, pareto_front(cands), cands[0], tmp_path / "pareto.png")
    assert sum(n for n, label in drawn if label != "champion") == len(cands)
