"""The whole flow on a small slice of real data (rotten_tomatoes + the offline MiniLM teacher),
on a real local Ray, with a real Optuna SQLite study and a real MLflow SQLite store.

One pipeline run serves several assertions (it is the expensive part): 2 rounds x 2
configurations x 2 seeds; one trial's worker process is killed mid-trial and Tune resumes it
from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from ray import tune
from tiny_jobs import tiny_job

from orchestrator.cli import main
from orchestrator.config import CascadeConfig, parse_job
from orchestrator.outer_loop import open_study
from orchestrator.pipeline import run_pipeline
from orchestrator.tracking import Tracker
from workers.dataset import tokenize_ids
from workers.latency import hardware_name

# The small-transformer route: one member from scratch, one from the fine-tuned teacher's bottom layer.
FAMILY = [{"layers": 1, "hidden": 32, "heads": 2, "ffn": 64},
          {"layers": 1, "hidden": 384, "heads": 12, "ffn": 1536, "init": "teacher", "embedding_rank": 16}]


class KillFirstTrialOnce(tune.Callback):
    """SIGKILLs the worker process of the first trial that reports epoch 1 (after its checkpoint)."""

    def __init__(self) -> None:
        self.killed: dict | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.killed is None and result.get("epoch") == 1:
            self.killed = dict(trial.config["trial"], pid=result["pid"])
            os.kill(result["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def finished_job(local_ray, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("ws")
    job = parse_job(tiny_job(workspace, small_transformers=FAMILY))
    killer = KillFirstTrialOnce()
    result = run_pipeline(job, tune_callbacks=[killer], progress=False)
    return job, result, killer


def test_study_holds_the_four_configurations(finished_job):
    job, _, _ = finished_job
    trials = open_study(job).trials
    assert len(trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["round"] for t in trials) == [0, 0, 1, 1]
    assert all(len(t.user_attrs["seeds"]) == 2 and 0 <= t.values[0] <= 1 for t in trials)


def test_killed_trial_resumed_from_its_checkpoint(finished_job):
    job, _, killer = finished_job
    assert killer.killed is not None, "no trial reached epoch 1"
    victim = next(t for t in open_study(job).trials if t.number == killer.killed["config_number"])
    seed = killer.killed["search"]["seed"]
    result = next(s for s in victim.user_attrs["seeds"] if s["seed"] == seed)
    assert result["epoch"] == job.search.epochs  # finished all epochs after the kill
    trial_dir = job.run_dir / "tune" / f"round-{killer.killed['round']}" / (
        f"config{killer.killed['config_number']}-seed{killer.killed['seed_index']}")
    assert (trial_dir / "error.txt").exists() or list(trial_dir.glob("error*")), "Tune recorded no failure"


def test_mlflow_holds_parent_child_and_trial_runs(finished_job):
    job, result, _ = finished_job
    tracker = Tracker(job, task_name="rotten_tomatoes")
    roles = tracker.runs_by_role()
    assert roles["parent"] == 1
    assert roles["config"] == 4
    assert roles["trial"] == 8
    assert roles["retrain"] >= 1
    trial_runs = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`adaray.role` = 'trial'")
    run = trial_runs[0]
    assert run.data.tags["mlflow.parentRunId"] != result.parent_run_id  # nested under its configuration
    assert "search_valid_score" in run.data.metrics
    artifacts = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert "genotype.json" in artifacts and any(p.endswith(".png") for p in artifacts)


def test_the_small_transformers_stand_beside_the_searched_students(finished_job):
    job, result, _ = finished_job
    members = {c.route: c for c in result.candidates if c.config_number is None}
    assert sorted(members) == ["small transformer L1-H32-F64-projected", "small transformer L1-H384-r16-teacher"]
    for c in members.values():
        assert 0 < c.score <= 1 and c.latency_ms > 0 and c.params > 0
    assert sum(c.config_number is not None for c in result.candidates) >= 1  # the searched finalists too
    # the teacher-started member keeps a rank-16 task-vocabulary table: far below the 384-wide one
    teacher_started = members["small transformer L1-H384-r16-teacher"]
    assert teacher_started.metrics["vocab_rows"] * 16 < teacher_started.params
    assert (job.run_dir / "pareto.png").is_file()
    tracker = Tracker(job, task_name="rotten_tomatoes")
    selection = tracker.client.download_artifacts(result.parent_run_id, "selection.json")
    logged = {c["route"] for c in json.loads(Path(selection).read_text())}
    assert set(members) <= logged and "cells" in logged


def test_registry_has_a_champion_that_predicts(finished_job):
    job, result, _ = finished_job
    tracker = Tracker(job, task_name="rotten_tomatoes")
    mv = tracker.client.get_model_version_by_alias(result.model_name, "champion")
    assert mv.version == result.champion_version
    for tag in ("teacher", "cache_key", "data_fingerprint", "genotype", "beta", "gamma", "seed", "latency_hardware",
                "metric", "dev_score", "test_score", "route"):
        assert mv.tags.get(tag), f"lineage tag {tag} missing"
    assert mv.tags["metric"] == "accuracy" and float(mv.tags["dev_score"]) == pytest.approx(result.champion.score)
    # the baseline every job is measured against, on the parent run and in the result
    parent_run = tracker.client.get_run(result.parent_run_id).data
    parent = parent_run.metrics
    # where the timings ran and where the teacher trained: the CPU's ISA moves both
    assert parent_run.tags["adaray.hardware"] == hardware_name("cpu")
    assert parent_run.tags["adaray.teacher_hardware"] == hardware_name("cpu")  # it fine-tuned in this process
    assert parent["tfidf_dev_accuracy"] == pytest.approx(result.baseline.dev) and 0 < result.baseline.dev < 1
    model = mlflow.pyfunc.load_model(f"models:/{result.model_name}@champion")
    predictions = model.predict(["a warm and funny film", "dull and lifeless"])
    assert len(predictions) == 2
    for p in predictions:
        assert p.label in ("fresh", "rotten")
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-4)


def test_pull_writes_a_loadable_folder(finished_job, tmp_path):
    job, result, _ = finished_job
    from workers.student import StudentPredictor, load_student

    out = tmp_path / "pulled"
    code = main(["pull", f"{result.model_name}@champion", "-o", str(out),
                 "--workspace", str(job.workspace_path)])
    assert code == 0
    student = load_student(out)
    assert sum(p.numel() for p in student.parameters()) == result.champion.params
    assert StudentPredictor.from_pretrained(out).predict(["great"])[0]["label"] in ("fresh", "rotten")


def test_the_registered_champion_exports_to_onnx_that_agrees_with_torch(finished_job, tmp_path):
    job, result, _ = finished_job
    from workers.onnx_export import ONNX_FILE, session
    from workers.student import StudentPredictor

    out = tmp_path / "onnx"
    assert main(["export", f"{result.model_name}@champion", "-o", str(out), "--onnx",
                 "--workspace", str(job.workspace_path)]) == 0
    # Real text, tokenized as the student tokenizes it (no special tokens), through the graph.
    texts = ["a warm, funny film", "dull and far too long"]
    with tempfile.TemporaryDirectory() as tmp:
        assert main(["pull", f"{result.model_name}@champion", "-o", tmp, "--workspace", str(job.workspace_path)]) == 0
        predictor = StudentPredictor.from_pretrained(tmp)
    ids, _ = tokenize_ids(predictor.tokenizer, texts, max_length=predictor.max_length)
    length = max(map(len, ids))
    feed = {"ids": np.array([row + [0] * (length - len(row)) for row in ids], dtype=np.int64),
            "mask": np.array([[True] * len(row) + [False] * (length - len(row)) for row in ids])}
    (logits,) = session(out / ONNX_FILE).run(["logits"], feed)
    got = torch.from_numpy(logits).softmax(dim=-1).numpy()
    want = [[p["probabilities"][name] for name in predictor.label_names] for p in predictor.predict(texts)]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_pull_never_deletes_what_it_did_not_write(finished_job, tmp_path, capsys):
    job, result, _ = finished_job
    ref, ws = f"{result.model_name}@champion", ["--workspace", str(job.workspace_path)]
    user = tmp_path / "project"
    user.mkdir()
    (user / "main.py").write_text("print('mine')")
    (user / "config.json").write_text("mine too")
    # A folder holding the user's files: refused, nothing touched, no staging folder left.
    assert main(["pull", ref, "-o", str(user), *ws]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "main.py"]
    # --force: the student's files land, the user's other files stay.
    assert main(["pull", ref, "-o", str(user), "--force", *ws]) == 0
    assert (user / "main.py").read_text() == "print('mine')"
    assert (user / "model.safetensors").is_file() and (user / "config.json").read_text() != "mine too"
    assert not [p for p in user.iterdir() if p.name.startswith(".") and p.name != ".adaray-files.json"]
    # A file as destination: refused, the file kept, nothing left beside it.
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    assert main(["pull", ref, "-o", str(target), *ws]) == 2
    assert target.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]


def test_rerun_is_all_cache_hits_and_duplicates_nothing(finished_job):
    job, result, _ = finished_job
    again = run_pipeline(job, progress=False)
    tracker = Tracker(job, task_name="rotten_tomatoes")
    assert tracker.runs_by_role()["trial"] == 8
    assert len(open_study(job).trials) == 4
    versions = tracker.client.search_model_versions(f"name = '{result.model_name}'")
    assert len(versions) == len({v.tags["adaray.key"] for v in versions})
    assert again.champion_version == result.champion_version


def test_a_rerun_on_an_emptied_tracking_store_finishes_every_run_it_opens(finished_job, tmp_path):
    """The store deleted after a finished job (issue 13, item 8): the rerun takes every round from
    Optuna, logs the finalists' configuration runs afresh, and leaves none RUNNING."""
    job, _, _ = finished_job
    fresh = job.model_copy(update={"tracking": job.tracking.model_copy(
        update={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})})
    result = run_pipeline(fresh, progress=False)
    tracker = Tracker(fresh, task_name="rotten_tomatoes")
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    assert result.champion_version is not None and runs
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert tracker.runs_by_role()["config"] >= 1


# slow: a second run of the job (69 s on the AMD EPYC); test_variants.py keeps an int8 variant's scoring,
# timing, registry and serving in the default run
@pytest.mark.slow
def test_turning_on_the_int8_variant_puts_every_students_export_on_the_front(finished_job, tmp_path):
    """The job rerun with `variants: [onnx-int8]` (a fresh tracking store, so the registry above is left
    as it is): every retrained student gains an onnxruntime int8 candidate, scored and timed as its
    own, and the front's variants are registered with their parent's lineage and served from there."""
    job, result, _ = finished_job
    with_int8 = job.model_copy(update={
        "variants": ["onnx-int8"], "budget": job.budget.model_copy(update={"register_top": 20}),
        "tracking": job.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})})
    again = run_pipeline(with_int8, progress=False)
    by_key = {c.key: c for c in again.candidates}
    parents = [c for c in again.candidates if c.metrics.get("runtime") == "torch"]
    assert {c.key for c in parents} == {c.key for c in result.candidates}  # the students themselves: cache hits
    for p in parents:
        v = by_key[f"{p.key}-onnx-int8"]
        assert v.route == f"{p.route}, onnx-int8" and v.params == p.params and v.genotype == p.genotype
        assert v.metrics["runtime"] == "onnxruntime" and 0 < v.latency_ms <= v.latency_p95_ms
        assert v.metrics["max_logit_diff"] < 0.05 and 0 < v.score <= 1
    variants_on_front = [c for c in again.front if c.key.endswith("-onnx-int8")]
    assert variants_on_front  # onnxruntime runs these tiny students far faster than torch at batch 1
    tracker = Tracker(with_int8, task_name="rotten_tomatoes")
    registered = {v.tags["adaray.key"]: v for v in tracker.client.search_model_versions(f"name = '{again.model_name}'")}
    for c in variants_on_front:
        mv = registered[f"{job.name}/{c.key}"]
        assert mv.tags["variant"] == "onnx-int8" and mv.tags["runtime"] == "onnxruntime"
        assert mv.tags["parent_student"] == c.key.removesuffix("-onnx-int8")
    served = mlflow.pyfunc.load_model(f"models:/{again.model_name}/{registered[f'{job.name}/{variants_on_front[0].key}'].version}")
    assert served.predict(["a warm and funny film"])[0].label in ("fresh", "rotten")


# slow: a second run of the job (93 s on the AMD EPYC); test_cascade_student.py and test_outer_loop_unit.py keep
# a cascade's scoring, timing, registry, serving and the job's cascade candidates in the default run
@pytest.mark.slow
def test_a_cascade_of_the_budgets_pick_and_the_best_student_stands_on_the_front(finished_job, tmp_path):
    """The job rerun with `cascade: {defer: [...]}` and a budget that picks the smallest student: each share
    is a candidate of its own, the smallest student in front of the best of the others, scored as served,
    timed beside the teacher, registered and served whole."""
    job, result, _ = finished_job
    with_cascade = job.model_copy(update={
        "cascade": CascadeConfig(defer=[0.2, 0.6]),
        "budget": job.budget.model_copy(update={"within_teacher_points": 100.0, "register_top": 20}),
        "tracking": job.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})})
    again = run_pipeline(with_cascade, progress=False)
    singles = [c for c in again.candidates if c.metrics.get("runtime") != "cascade"]
    assert {c.key for c in singles} == {c.key for c in result.candidates}  # cache hits
    smallest = min(singles, key=lambda c: (c.params, -c.score))
    cascades = [c for c in again.candidates if c.metrics.get("runtime") == "cascade"]
    if not any(c.score > smallest.score for c in singles):
        assert cascades == []  # a back no better than the front only adds its cost
        return
    assert [c.metrics["defer"] for c in cascades] == [0.2, 0.6]
    back = max((c for c in singles if c.score > smallest.score), key=lambda c: c.score)
    for c in cascades:
        assert c.metrics["front"] == smallest.key and c.metrics["back_dev_metric"] == pytest.approx(back.score)
        assert c.route.startswith(f"cascade: {smallest.route}, then ") and c.params == smallest.params + back.params
        assert 0 < c.latency_ms and c.speedup > 0 and 0 <= c.metrics["deferred_dev"] <= 1
    assert cascades[0].metrics["deferred_dev"] <= cascades[1].metrics["deferred_dev"]
    on_front = [c for c in cascades if c.key in {f.key for f in again.front}]
    tracker = Tracker(with_cascade, task_name="rotten_tomatoes")
    registered = {v.tags["adaray.key"]: v for v in tracker.client.search_model_versions(f"name = '{again.model_name}'")}
    for c in on_front:
        mv = registered[f"{job.name}/{c.key}"]
        assert mv.tags["back_student"] == c.metrics["back"] and mv.tags["runtime"] == "cascade"
        served = mlflow.pyfunc.load_model(f"models:/{again.model_name}/{mv.version}")
        assert served.predict(["a warm and funny film"])[0].label in ("fresh", "rotten")
