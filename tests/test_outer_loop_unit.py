"""The outer loop's pure parts: distributions, trial configs, aggregation over seeds."""

import json

import optuna
import pytest

from orchestrator.config import ParamRange, parse_job
from orchestrator.outer_loop import (
    DataRefs,
    aggregate,
    candidate_id,
    candidates_to_screen,
    distribution,
    leading_source,
    open_study,
    trial_configs,
)

REFS = DataRefs(cache_uri="/c", prepared_dir="/p", teacher_dir="/t")
TEACHER_TIMES = {"latency_b1_mean_ms": 20.0, "latency_b128_mean_ms": 1000.0}  # the teacher timed beside a student


def job(tmp_path, **outer):
    return parse_job({"name": "unit", "workspace": str(tmp_path), "task": {"builtin": "rotten_tomatoes"},
                      "outer_loop": {"seeds": 3, **outer}})


@pytest.mark.parametrize("r, kind", [
    (ParamRange(low=0.1, high=1.0, log=True), optuna.distributions.FloatDistribution),
    (ParamRange(low=2, high=8, int=True), optuna.distributions.IntDistribution),
    (ParamRange(choices=[4, 8]), optuna.distributions.CategoricalDistribution),
])
def test_distribution_kinds(r, kind):
    assert isinstance(distribution(r), kind)


def test_a_searched_embedding_rank_reaches_the_space_and_names_the_route(tmp_path):
    from orchestrator.retrain_stage import StudentSpec, transformer_specs
    from search_space.config import TransformerConfig

    def student_route(space: dict) -> str:
        return StudentSpec("k", "{}", space, j.retrain, tmp_path).route

    j = job(tmp_path, params={"embedding_rank": {"choices": [None, 32]}})
    low, full = (trial_configs(j, number=0, round_index=0, params={"embedding_rank": r}, refs=REFS)[0]["space"]
                 for r in (32, None))
    assert low["embedding_rank"] == 32 and full["embedding_rank"] is None
    assert student_route(low) == "cells, rank-32 table" and student_route(full) == "cells"
    assert student_route({**full, "embedding_kronecker": 32}) == "cells, 32-term Kronecker table"
    family = j.model_copy(update={"small_transformers": [TransformerConfig(layers=2, hidden=64, heads=2, ffn=128,
                                                                            embedding_rank=16)]})
    (member,) = transformer_specs(family, cache_key="c")
    assert member.route == "small transformer L2-H64-F128-r16-projected" and member.outcome is None
    # Its registry tags: what it is and where it came from, with no search fields to fill.
    from orchestrator.pipeline import _lineage, candidate_of

    metrics = {"dev_metric": 0.8, "test_metric": 0.79, "metric": "accuracy", "params": 1000, "latency_b1_mean_ms": 1.0,
               "latency_b1_p95_ms": 1.2, "latency_b128_mean_ms": 100.0}
    c = candidate_of(member, metrics, batch=1, teacher=TEACHER_TIMES)
    tags = _lineage(family, c, spec=member, teacher_dir=tmp_path, cache_key="c", fingerprint="f")
    assert c.config_number is None and c.route == member.route
    assert c.speedup == tags["speedup"] == 10.0  # 20x at batch 1, 10x at batch 128: the lesser
    assert tags["route"] == member.route and tags["origin"] == "small-transformer family"
    assert TransformerConfig.from_dict(json.loads(tags["transformer"])).embedding_rank == 16
    assert tags["embed_dim"] == 64 and tags["embedding_rank"] == 16 and tags["genotype"] == tags["beta"] == ""
    assert isinstance(distribution(j.outer_loop.params["embedding_rank"]), optuna.distributions.CategoricalDistribution)


def test_each_variant_is_a_student_of_its_own_beside_its_parent(tmp_path):
    from orchestrator.pipeline import _lineage, candidate_of
    from orchestrator.retrain_stage import screen_config, transformer_specs, variant_specs
    from search_space.config import TransformerConfig

    j = job(tmp_path).model_copy(update={"variants": ["onnx", "onnx-int8"], "small_transformers": [
        TransformerConfig(layers=1, hidden=32, heads=2, ffn=64)]})
    (member,) = transformer_specs(j, cache_key="c")
    fp32, int8 = variant_specs(j, [member])
    assert int8.key == f"{member.key}-onnx-int8" and int8.out_dir == member.out_dir.parent / int8.key
    assert int8.route == f"{member.route}, onnx-int8" and fp32.route == f"{member.route}, onnx"
    assert int8.arch_json == member.arch_json and int8.parent is member
    metrics = {"dev_metric": 0.8, "test_metric": 0.79, "metric": "accuracy", "params": 1000, "latency_b1_mean_ms": 1.0,
               "latency_b1_p95_ms": 1.2, "latency_b128_mean_ms": 100.0, "runtime": "onnxruntime"}
    tags = _lineage(j, candidate_of(int8, metrics, batch=1, teacher=TEACHER_TIMES), spec=int8, teacher_dir=tmp_path,
                    cache_key="c", fingerprint="f")
    assert (tags["variant"], tags["parent_student"], tags["runtime"]) == ("onnx-int8", member.key, "onnxruntime")
    assert variant_specs(j.model_copy(update={"variants": []}), [member]) == []
    # A screened student is ranked by its dev score and never served: no early-exit sweep.
    assert screen_config(j).exit_max_drop is None and j.retrain.exit_max_drop is not None


def test_a_cascade_of_each_runtime_of_one_cell_is_a_student_of_its_own(tmp_path):
    from orchestrator.config import CascadeConfig
    from orchestrator.retrain_stage import StudentSpec, cascade_specs, transformer_specs, variant_specs
    from search_space.config import TransformerConfig

    j = job(tmp_path).model_copy(update={"variants": ["onnx", "onnx-int8"], "cascade": CascadeConfig(defer=[0.05, 0.1]),
                                         "small_transformers": [TransformerConfig(layers=1, hidden=32, heads=2, ffn=64)]})
    cell = StudentSpec("d510f000f857ad4f", "{}", {}, j.retrain, tmp_path / "students" / "d510f000f857ad4f")
    (member,) = transformer_specs(j, cache_key="c")
    back = variant_specs(j, [member])[1]
    made = [c for front in [cell, *variant_specs(j, [cell])] for c in cascade_specs(j, front, back)]
    assert len({c.key for c in made}) == len(made) == 6  # a cell, its fp32 and its int8 graph: 3 fronts x 2 shares
    assert made[0].key == f"d510f000-{member.key[:8]}-onnx-int8-d050"
    assert made[-1].key == f"d510f000-onnx-int8-{member.key[:8]}-onnx-int8-d100"
    assert all(c.out_dir == cell.out_dir.with_name(c.key) and c.back is back for c in made)


def test_trial_configs_place_params_and_vary_seeds(tmp_path):
    j = job(tmp_path)
    dicts = trial_configs(j, number=5, round_index=1, params={"beta": 2.5, "k_max": 4}, refs=REFS)
    assert [d["search"]["seed"] for d in dicts] == [0, 1, 2]
    assert all(d["search"]["beta"] == 2.5 and d["space"]["k_max"] == 4 for d in dicts)
    assert all(d["config_number"] == 5 and d["round"] == 1 and d["cache_uri"] == "/c" for d in dicts)
    assert all(d["search"]["draw_stream"] == 5 for d in dicts)  # each configuration screens its own draws
    # the job's own config is not mutated by one configuration's params
    assert j.search.beta == 0.1 and j.space.k_max == 8


def _seed(seed, best, pool, collapse=0):
    """A trial's last metrics: its pool of (genotype, inherited score, flops)."""
    cands = [{"genotype": g, "score": sc, "params": int(f), "flops": f} for g, sc, f in pool]
    return {"seed": seed, "space": {"k": 1}, "genotype": best, "best_candidate": best, "collapse": collapse,
            "candidates": json.dumps(cands), "search_valid_score": pool[0][1], "derived_params": 1,
            "derived_flops": 1.0}


G1, G2, G3 = '{"depth": 1}', '{"depth": 2}', '{"depth": 3}'
SEEDS = [
    _seed(0, G1, [(G1, 0.9, 10.0), (G2, 0.6, 20.0)]),
    _seed(1, G1, [(G1, 0.7, 10.0), (G3, 0.8, 30.0)], collapse=1),
    _seed(2, G3, [(G3, 0.85, 30.0)], collapse=1),
]


def test_the_screen_takes_each_configurations_best_candidates_by_inherited_score(tmp_path):
    j = job(tmp_path, screen={"top": 2})
    picked = candidates_to_screen(j, SEEDS)
    assert [c["genotype"] for c in picked] == [G1, G3]  # one entry per genotype, its best inherited score
    assert [c["score"] for c in picked] == [0.9, 0.85] and picked[0]["seed"] == 0
    assert candidates_to_screen(j, [None, None, None]) == []


def test_uniform_draws_reach_the_screen_whatever_their_inherited_score(tmp_path):
    j = job(tmp_path, screen={"top": 1})
    g4 = '{"depth": 4}'
    seeds = [{**SEEDS[0], "candidates": json.dumps([*json.loads(SEEDS[0]["candidates"]),
                                                     {"genotype": g4, "score": 0.1, "params": 5, "flops": 5.0,
                                                      "source": "random"}])}, SEEDS[1]]
    picked = candidates_to_screen(j, seeds)
    assert [(c["genotype"], c.get("source", "alpha")) for c in picked] == [(G1, "alpha"), (g4, "random")]
    dicts = trial_configs(j, number=0, round_index=0, params={}, refs=REFS)[:2]
    short = {candidate_id({"genotype": G1, "space": {"k": 1}}): 0.71,
             candidate_id({"genotype": g4, "space": {"k": 1}}): 0.74}
    out = aggregate(j, trial_dicts=dicts, seeds=seeds, number=0, round_index=0, params={}, short_scores=short)
    assert out.genotype == g4 and out.score == 0.74  # the draw beat the search on the measurement: it is kept


def _pool_seed(seed, *, alpha, draws):
    """A trial's last metrics whose pool holds alpha's candidates, then its uniform draws in the order drawn."""
    cands = [{"genotype": g, "score": sc, "params": 1, "flops": 1.0} for g, sc in alpha]
    cands += [{"genotype": g, "score": sc, "params": 1, "flops": 1.0, "source": "random"} for g, sc in draws]
    return {**_seed(seed, alpha[0][0], [(alpha[0][0], alpha[0][1], 1.0)]), "candidates": json.dumps(cands)}


A1, A2, A3, D1, D2, D3, D4 = (json.dumps({"depth": 1, "tag": t}) for t in ("a1", "a2", "a3", "d1", "d2", "d3", "d4"))
TWO_SEEDS = [_pool_seed(0, alpha=[(A1, 0.9), (A2, 0.8)], draws=[(D1, 0.5), (D2, 0.6)]),
             _pool_seed(1, alpha=[(A3, 0.7)], draws=[(D3, 0.4), (D4, 0.3)])]


@pytest.mark.parametrize("lead, expected", [
    (None, [A1, D1, D3]),  # top 1 of alpha, each seed's first draw (by inherited score)
    ("random", [D1, D3, D2]),  # as many slots, every seed's first draw before any seed's second
    ("alpha", [A1, A2, A3]),
])
def test_a_lead_gives_the_configurations_slots_to_its_source(tmp_path, lead, expected):
    j = job(tmp_path, seeds=2, screen={"top": 1})
    assert [c["genotype"] for c in candidates_to_screen(j, TWO_SEEDS, lead=lead)] == expected


def test_the_other_source_fills_in_where_the_lead_runs_short(tmp_path):
    j = job(tmp_path, seeds=2, screen={"top": 2})  # 2 + 2 slots; alpha has 3 candidates
    assert [c["genotype"] for c in candidates_to_screen(j, TWO_SEEDS, lead="alpha")] == [A1, A2, A3, D1]


def test_the_leading_source_is_the_higher_mean_beyond_its_standard_error():
    from orchestrator.outer_loop import ConfigOutcome

    def outcome(*screened):
        return ConfigOutcome(number=0, round=0, params={}, space={}, search={}, score=0.0, cost=0.0, agreement=1.0,
                             collapse=False, genotype="", seeds=(), candidates=tuple(
                                 {"short_score": sc, **({"source": "random"} if src == "random" else {})}
                                 for src, sc in screened))

    # Fewer than two of either: no lead.
    assert leading_source([outcome(("alpha", 0.7), ("random", 0.8))]) == (None, {"alpha": [0.7], "random": [0.8]})
    lead, scores = leading_source([outcome(("alpha", 0.7623), ("random", 0.7862)),
                                   outcome(("alpha", 0.7958), ("random", 0.7873))])
    assert lead is None and scores["alpha"] == [0.7623, 0.7958]  # 0.77 points apart, 1.68 of noise: no lead
    lead, _ = leading_source([outcome(("alpha", 0.7623), ("random", 0.7862)),
                              outcome(("alpha", 0.7758), ("random", 0.7873))])
    assert lead == "random"  # 1.77 points apart, 0.68 of noise (the 70b3915 demo's round 1), though alpha's
    # best is not far behind the draws' best: the mean decides
    assert leading_source([outcome(("alpha", 0.80), ("random", 0.75)), outcome(("alpha", 0.81), ("random", 0.74))])[0] \
        == "alpha"
    tie = [outcome(("alpha", 0.7570), ("random", 0.7570)), outcome(("alpha", 0.7862), ("random", 0.7862))]
    assert leading_source(tie)[0] is None  # seed 2's round 1 in the 3-seed run: the mix stays


def test_trials_report_enough_of_either_source_to_fill_the_slots_under_measured_allocation(tmp_path):
    measured = job(tmp_path, screen={"top": 2})
    assert {d["search"]["random_candidates"] for d in trial_configs(measured, number=0, round_index=0, params={},
                                                                    refs=REFS)} == {2 + measured.search.random_candidates}
    fixed = job(tmp_path, screen={"top": 2, "allocate": "fixed"})
    d = trial_configs(fixed, number=0, round_index=0, params={}, refs=REFS)[0]["search"]
    assert (d["random_candidates"], d["report_candidates"]) == (fixed.search.random_candidates,
                                                                fixed.search.report_candidates)
    alpha_only = measured.model_copy(update={"search": measured.search.model_copy(update={"random_candidates": 0})})
    assert trial_configs(alpha_only, number=0, round_index=0, params={}, refs=REFS)[0]["search"]["random_candidates"] == 0


@pytest.mark.parametrize("allocate", ["measured", "fixed"])
def test_round_two_screens_the_source_that_screened_better_in_round_one(tmp_path, monkeypatch, allocate):
    """Two rounds with Tune replaced by canned pools: round 1 screens alpha's best and a draw per configuration;
    the draws retrain better, so under measured allocation round 2 screens two draws each and no alpha candidate."""
    import orchestrator.outer_loop as loop

    j = job(tmp_path, rounds=2, configs_per_round=2, seeds=1, screen={"top": 1, "allocate": allocate})
    tag = lambda n, t: json.dumps({"depth": 1, "tag": f"{t}{n}"})  # noqa: E731  each configuration's own genotypes
    monkeypatch.setattr(loop, "run_round", lambda job, *, round_index, trial_dicts, callbacks=None: [
        (d, _pool_seed(0, alpha=[(tag(d["config_number"], "a"), 0.9), (tag(d["config_number"], "b"), 0.8)],
                       draws=[(tag(d["config_number"], "d"), 0.5), (tag(d["config_number"], "e"), 0.4)]), [])
        for d in trial_dicts])
    screened, notes = [], []

    def screen(cands):
        screened.append(sorted(json.loads(c["genotype"])["tag"] for c in cands))
        return {candidate_id(c): 0.80 if c.get("source") == "random" else 0.75 for c in cands}

    outcomes = loop.run_outer_loop(j, refs=REFS, hooks=loop.LoopHooks(screen=screen, on_note=notes.append))
    assert screened[0] == ["a0", "a1", "d0", "d1"]
    assert screened[1] == (["d2", "d3", "e2", "e3"] if allocate == "measured" else ["a2", "a3", "d2", "d3"])
    assert [o.score for o in outcomes] == [0.80] * 4  # Optuna is told the screened student's score either way
    assert notes == (["round 2: the screen's slots go to uniform draws: screened so far, uniform draws 0.8000 over 2, "
                      "alpha's candidates 0.7500 over 2 (mean dev score)"] if allocate == "measured" else [])


def test_the_outcome_is_the_candidate_with_the_best_short_retrain(tmp_path):
    j = job(tmp_path, screen={"top": 2})
    dicts = trial_configs(j, number=0, round_index=0, params={"beta": 1.0}, refs=REFS)
    short = {candidate_id({"genotype": G1, "space": {"k": 1}}): 0.71,
             candidate_id({"genotype": G3, "space": {"k": 1}}): 0.78}
    out = aggregate(j, trial_dicts=dicts, seeds=SEEDS, number=0, round_index=0, params={"beta": 1.0},
                    short_scores=short)
    # G1 led on inherited score; the short retrain ranks G3 first, and that is what the outcome says.
    assert out.genotype == G3 and out.score == 0.78 and out.cost == 30.0
    assert [c["genotype"] for c in out.candidates] == [G3, G1]
    assert out.agreement == pytest.approx(2 / 3) and out.collapse is True
    assert aggregate(j, trial_dicts=dicts, seeds=[None] * 3, number=0, round_index=0, params={},
                     short_scores={}) is None


def test_retrains_start_longest_first_by_the_cost_models_flops(tmp_path):
    from orchestrator.retrain_stage import StudentSpec, longest_first, transformer_specs
    from search_space.config import TransformerConfig

    j = job(tmp_path)
    space = j.space.to_dict()
    pools = json.dumps({"depth": 1, "nodes": [[["max_pool_3", 0], ["identity", 1]]] * 3})
    convs = json.dumps({"depth": 3, "nodes": [[["conv_7", 0], ["dil_conv_5", 1]]] * 3})
    cells = [StudentSpec(name, g, space, j.retrain, tmp_path / name) for name, g in (("pools", pools), ("convs", convs))]
    (member,) = transformer_specs(j.model_copy(update={"small_transformers": [
        TransformerConfig(layers=1, hidden=32, heads=2, ffn=64)]}), cache_key="c")
    assert [s.key for s in longest_first([*cells, member])] == [member.key, "convs", "pools"]


@pytest.mark.parametrize("fidelity", ["short", "full"])
def test_at_full_fidelity_the_screened_students_are_the_finalists(tmp_path, fidelity):
    from orchestrator.retrain_stage import finalist_specs, screen_config, screen_dir, screen_specs

    j = job(tmp_path, screen={"top": 2, "finalists": 1, "fidelity": fidelity})
    dicts = trial_configs(j, number=0, round_index=0, params={}, refs=REFS)
    short = {candidate_id({"genotype": G1, "space": {"k": 1}}): 0.71,
             candidate_id({"genotype": G3, "space": {"k": 1}}): 0.78}
    out = aggregate(j, trial_dicts=dicts, seeds=SEEDS, number=0, round_index=0, params={}, short_scores=short)
    screened = screen_specs(j, candidates_to_screen(j, SEEDS), cache_key="c")
    (final,) = finalist_specs(j, [out], cache_key="c")
    assert final.genotype == G3 and final.retrain == j.retrain
    by_key = {s.key: s for s in screened}
    if fidelity == "full":  # trained once: the finalist's key and folder are its screen's
        assert screen_config(j) == j.retrain and by_key[final.key].out_dir == final.out_dir
        assert screen_dir(j) == final.out_dir.parent
    else:  # a short screen, then the full retrain of the finalist in a folder of its own
        assert screen_config(j).epochs == 1 and final.key not in by_key
        assert screen_dir(j) != final.out_dir.parent
        assert {s.out_dir.parent for s in screened} == {screen_dir(j)}


def test_optuna_is_told_the_short_retrained_figures(tmp_path, monkeypatch):
    """The outer loop with Tune replaced by canned trial results: the study holds what the screen measured."""
    import orchestrator.outer_loop as loop

    j = job(tmp_path, rounds=1, configs_per_round=1, screen={"top": 2})

    def fake_round(job, *, round_index, trial_dicts, callbacks=None):
        return [(d, SEEDS[d["seed_index"]], []) for d in trial_dicts]

    monkeypatch.setattr(loop, "run_round", fake_round)
    screened = []

    def screen(cands):
        screened.extend(c["genotype"] for c in cands)
        return {candidate_id(c): {G1: 0.70, G3: 0.74}[c["genotype"]] for c in cands}

    outcomes = loop.run_outer_loop(j, refs=REFS, hooks=loop.LoopHooks(screen=screen))
    assert sorted(screened) == sorted([G1, G3])
    (trial,) = open_study(j).trials
    assert trial.values == [0.74, 30.0]  # the screened student's dev score and its FLOPs
    assert trial.user_attrs["genotype"] == G3 == outcomes[0].genotype


def test_a_failed_configuration_is_asked_again_with_its_params_on_the_next_run(tmp_path, monkeypatch):
    """Every seed of the first run's configuration raised (a bug since fixed, say): the next run retries those
    params rather than find the round finished and no configuration to show; a third run asks nothing."""
    import orchestrator.outer_loop as loop

    j = job(tmp_path, rounds=1, configs_per_round=1, screen={"top": 2})
    monkeypatch.setattr(loop, "run_round", lambda job, *, round_index, trial_dicts, callbacks=None:
                        [(d, None, []) for d in trial_dicts])
    with pytest.raises(RuntimeError, match="every trial of round 1 failed"):
        loop.run_outer_loop(j, refs=REFS)
    (failed,) = open_study(j).trials
    assert failed.state == optuna.trial.TrialState.FAIL

    monkeypatch.setattr(loop, "run_round", lambda job, *, round_index, trial_dicts, callbacks=None:
                        [(d, SEEDS[d["seed_index"]], []) for d in trial_dicts])
    (outcome,) = loop.run_outer_loop(j, refs=REFS)
    trials = open_study(j).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[1].params == failed.params and trials[1].user_attrs["round"] == 0
    assert outcome.genotype == trials[1].user_attrs["genotype"]

    monkeypatch.setattr(loop, "run_round", lambda *a, **k: pytest.fail("a finished round ran again"))
    assert [o.genotype for o in loop.run_outer_loop(j, refs=REFS)] == [outcome.genotype]


def test_study_is_persistent_and_multi_objective(tmp_path):
    j = job(tmp_path, objectives=["accuracy", "params"])
    study = open_study(j)
    t = study.ask({"beta": distribution(ParamRange(low=0.5, high=8, log=True))})
    study.tell(t, [0.8, 1000.0])
    again = open_study(j)
    assert [d.name for d in again.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(again.trials) == 1 and again.trials[0].values == [0.8, 1000.0]


def test_relative_workspace_reaches_trials_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    j = parse_job({"name": "rel", "workspace": ".adaray", "task": {"builtin": "rotten_tomatoes"}})
    assert j.workspace_path == tmp_path.resolve() / ".adaray"
    assert j.run_dir.is_absolute()


def test_a_students_key_depends_on_its_retrain_and_how_students_are_made(monkeypatch):
    from orchestrator.retrain_stage import student_key
    from workers.config import RetrainConfig

    base = {"genotype": json.dumps({"cells": []}), "space": {}, "cache_key": "c", "retrain": RetrainConfig()}
    key = student_key(**base)
    assert key == student_key(**base)
    assert student_key(**{**base, "retrain": RetrainConfig(epochs=RetrainConfig().epochs + 1)}) != key
    monkeypatch.setattr("orchestrator.retrain_stage.RETRAIN_RECIPE", "a new recipe")
    assert student_key(**base) != key  # a workspace's student trained the old way is not reused
