"""The outer loop's pure parts: distributions, trial configs, aggregation over seeds."""

import optuna
import pytest

from orchestrator.config import ParamRange, parse_job
from orchestrator.outer_loop import DataRefs, aggregate, distribution, open_study, trial_configs

REFS = DataRefs(cache_uri="/c", prepared_dir="/p", teacher_dir="/t")


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


def test_trial_configs_place_params_and_vary_seeds(tmp_path):
    j = job(tmp_path)
    dicts = trial_configs(j, number=5, round_index=1, params={"beta": 2.5, "k_max": 4}, refs=REFS)
    assert [d["search"]["seed"] for d in dicts] == [0, 1, 2]
    assert all(d["search"]["beta"] == 2.5 and d["space"]["k_max"] == 4 for d in dicts)
    assert all(d["config_number"] == 5 and d["round"] == 1 and d["cache_uri"] == "/c" for d in dicts)
    # the job's own config is not mutated by one configuration's params
    assert j.search.beta == 4.0 and j.space.k_max == 8


def test_aggregate_median_agreement_collapse(tmp_path):
    j = job(tmp_path)
    dicts = trial_configs(j, number=0, round_index=0, params={"beta": 1.0}, refs=REFS)
    g1, g2 = '{"depth": 1}', '{"depth": 2}'
    seeds = [
        {"search_valid_acc": 0.7, "derived_flops": 10.0, "derived_params": 5, "genotype": g1, "collapse": 0},
        {"search_valid_acc": 0.9, "derived_flops": 30.0, "derived_params": 7, "genotype": g1, "collapse": 1},
        {"search_valid_acc": 0.8, "derived_flops": 20.0, "derived_params": 6, "genotype": g2, "collapse": 1},
    ]
    out = aggregate(j, trial_dicts=dicts, seeds=seeds, number=0, round_index=0, params={"beta": 1.0})
    assert out.accuracy == 0.8 and out.cost == 20.0
    assert out.genotype == g1 and out.agreement == pytest.approx(2 / 3)
    assert out.collapse is True
    assert aggregate(j, trial_dicts=dicts, seeds=[None] * 3, number=0, round_index=0, params={}) is None


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
