"""Pick students: the Pareto front over (score up: the task's metric on dev; latency down, params down) and the champion.

Pure functions over plain records, so they are easy to test; plotting lives in plots.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config import BudgetConfig


@dataclass(frozen=True)
class Candidate:
    """One retrained student."""

    key: str  # stable id: hash of genotype + space + cache key + retrain config
    config_number: int | None  # the Optuna trial (configuration) it came from; None: no search (a small transformer)
    genotype: str  # JSON
    score: float  # the task's metric on dev, in [0, 1]
    latency_ms: float  # mean per call at the budget's batch size
    latency_p95_ms: float
    params: int
    metrics: dict = field(default_factory=dict, compare=False)
    student_dir: str = ""
    params_of_config: dict = field(default_factory=dict, compare=False)
    route: str = "cells"  # how it was compressed: "cells", "cells, rank-r table", "small transformer L2-H128-..."
    speedup: float | None = None  # the teacher's mean latency over this one's, the lesser of batch 1 and 128
    origin: str = ""  # the retrained student it is a runtime of (an export's parent): one model, whatever runs it


def speedup(student: dict, teacher: dict) -> float:
    """How many times faster than the teacher, at its worse of batch 1 and batch 128: both dicts hold
    latency_b{1,128}_mean_ms, timed side by side. The mean per call is what a stream of texts pays when
    calls differ in cost (a cascade's); for a model whose calls cost alike it is about the median."""
    return min(teacher[f"latency_b{b}_mean_ms"] / student[f"latency_b{b}_mean_ms"] for b in (1, 128))


def dominates(a: Candidate, b: Candidate) -> bool:
    no_worse = a.score >= b.score and a.latency_ms <= b.latency_ms and a.params <= b.params
    better = a.score > b.score or a.latency_ms < b.latency_ms or a.params < b.params
    return no_worse and better


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Non-dominated candidates, best score first."""
    front = [c for c in candidates if not any(dominates(o, c) for o in candidates if o is not c)]
    return sorted(front, key=lambda c: (-c.score, c.latency_ms, c.params))


@dataclass(frozen=True)
class Choice:
    champion: Candidate
    reason: str
    met_budget: bool


def pick_champion(candidates: list[Candidate], *, budget: BudgetConfig, teacher_score: float | None,
                  metric_name: str = "accuracy") -> Choice:
    """The budget's pick among all `candidates`, not only the front's: the front weighs the mean latency at the
    budget's batch, while the budget also reads the p95 and batch 128, so a student off the front can meet it
    where the one dominating it does not (a fresh-clone demo's 0.04 cascade: 79.77 dev at 10.1x, dominated at
    batch 1 by the 0.06 one at 9.1x; picked from the front, the budget fell back to a cell at 78.83). When no
    student meets the budget, the closest one, flagged. `metric_name` names the task's metric in the reason."""
    if not candidates:
        raise ValueError("no retrained students to choose from")
    ranked = sorted(candidates, key=lambda c: (-c.score, c.latency_ms, c.params))  # ties: the faster, the smaller
    rules = []
    ok = list(ranked)
    if budget.max_latency_ms is not None:
        ok = [c for c in ok if c.latency_p95_ms <= budget.max_latency_ms]
        rules.append(f"p95 batch-{budget.latency_batch} latency <= {budget.max_latency_ms} ms")
    if budget.max_params is not None:
        ok = [c for c in ok if c.params <= budget.max_params]
        rules.append(f"params <= {budget.max_params:,}")
    if budget.min_speedup is not None:
        if any(c.speedup is None for c in ranked):
            raise ValueError("budget.min_speedup needs every candidate's speed-up over the teacher")
        ok = [c for c in ok if c.speedup >= budget.min_speedup]
        rules.append(f"{budget.min_speedup:g}x faster than the teacher at batch 1 and 128")
    smallest = budget.within_teacher_points is not None and teacher_score is not None
    if smallest:
        floor = teacher_score - budget.within_teacher_points / 100
        ok = [c for c in ok if c.score >= floor]
        rules.append(f"{metric_name} >= teacher - {budget.within_teacher_points} points ({floor:.4f})")
    goal = "smallest" if smallest else f"best {metric_name}"
    if ok:
        pick = min(ok, key=lambda c: (c.params, -c.score)) if smallest else ok[0]  # ok keeps ranked's order
        return Choice(pick, f"{goal} with {' and '.join(rules)}" if rules else goal, True)
    # Nothing meets the budget: the fastest student when latency is bounded, else the best.
    if budget.max_latency_ms is not None:
        pick = min(ranked, key=lambda c: c.latency_p95_ms)
        return Choice(pick, f"no student meets {' and '.join(rules)}; picked the fastest", False)
    if budget.min_speedup is not None:
        pick = max(ranked, key=lambda c: c.speedup)
        return Choice(pick, f"no student meets {' and '.join(rules)}; picked the fastest against the teacher", False)
    pick = ranked[0]
    return Choice(pick, f"no student meets {' and '.join(rules)}; picked the best {metric_name}", False)


def select(candidates: list[Candidate], *, budget: BudgetConfig, teacher_score: float | None,
           metric_name: str = "accuracy") -> tuple[list[Candidate], Choice]:
    """The job's selection: the Pareto front of `candidates` (drawn, registered) and the budget's pick among
    all of them (on the front or not: see pick_champion)."""
    return pareto_front(candidates), pick_champion(candidates, budget=budget, teacher_score=teacher_score,
                                                   metric_name=metric_name)


def cascade_pair(candidates: list[Candidate], *, front: Candidate) -> tuple[Candidate, Candidate] | None:
    """(front, back) of a cascade, each student at its fastest runtime (a student and its exports are one model;
    a cascade wants the quickest way to run it): `front`'s model in front, since it runs on every text (the budget
    took a torch cell at 79.04 dev over its int8 graph at 78.94; in front, its 2.5x slower batch 1 put all six
    cascades under 10x), and behind it the best dev score among the other students. None when no other student
    scores above the front: a back no better than the front only adds its cost."""
    def model(c: Candidate) -> str:
        return c.origin or c.key

    def slowness(c: Candidate) -> tuple:  # over the teacher at both batch sizes, then at the budget's
        return -(c.speedup or 0.0), c.latency_ms

    fastest: dict[str, Candidate] = {}
    for c in candidates:
        if model(c) not in fastest or slowness(c) < slowness(fastest[model(c)]):
            fastest[model(c)] = c
    front = fastest.get(model(front), front)
    backs = [c for m, c in fastest.items() if m != model(front) and c.score > front.score]
    return (front, max(backs, key=lambda c: (c.score, -c.latency_ms))) if backs else None
