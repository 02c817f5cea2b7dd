"""The whole job: prepare → teacher → cache → outer loop → retrain (+ variants) → select → register.

Every stage is keyed by its inputs, so running a finished job again is a string of cache hits,
and `adaray resume` after a dead driver is the same call: the study, the Tune experiments, the
MLflow runs (looked up by key) and the registry versions (looked up by key) all carry on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cluster.connect import check_cluster, ensure_ray, shutdown_if_owned
from orchestrator.baselines import BaselineScores, tfidf_logreg
from orchestrator.config import JobConfig, dump_job
from orchestrator.data import PreparedData
from orchestrator.errors import AdarayError, deferred_interrupt, worker_errors
from orchestrator.job_lock import job_lock
from orchestrator.measure import cascade_timeable, student_timeable, teacher_timeable, time_models
from orchestrator.outer_loop import ConfigOutcome, DataRefs, LoopHooks, TrialProgress, run_outer_loop
from orchestrator.plots import cell_plot, pareto_plot
from orchestrator.retrain_stage import (
    StudentSpec,
    cascade_specs,
    finalist_specs,
    make_cascades,
    make_variants,
    retrain_students,
    screen_candidates,
    start_retrains,
    transformer_specs,
    variant_specs,
)
from orchestrator.selection import Candidate, Choice, cascade_pair, pick_champion, select, speedup
from orchestrator.stages import cache_stage, prepare_stage, teacher_stage
from orchestrator.teacher_source import check_transformer_inits, resolve_teacher_source
from orchestrator.tracking import (
    Tracker,
    check_tracking_store,
    default_tracking_uri,
    ui_command,
)
from search_space.genotype import Genotype
from workers.dataset import read_meta
from workers.latency import hardware_name
from workers.local_files import write_json_atomic, write_text_atomic
from workers.metrics import METRIC_NAMES

CASCADE_REPEATS = 150  # calls at batch 1 that time the cascades: at 10% deferred, about 15 go to the back (at 128: 10)


@dataclass(frozen=True)
class PipelineResult:
    champion: Candidate
    choice: Choice
    front: list[Candidate]
    candidates: list[Candidate]
    teacher_score: float
    teacher_latency_ms: float
    teacher_params: int
    teacher_latency: dict  # latency_b{1,128}_ms of the teacher, timed like every student
    baseline: BaselineScores  # TF-IDF + logistic regression on the same splits: what a user would try first
    model_name: str
    champion_version: str
    parent_run_id: str
    alias_kept: str | None = None  # why @champion stayed on a better version of another run


class StatusFile:
    """<run_dir>/status.json: where the job stands, for `adaray status` (written atomically)."""

    def __init__(self, job: JobConfig) -> None:
        self.path = job.run_dir / "status.json"
        self.state = json.loads(self.path.read_text()) if self.path.is_file() else {"job": job.name}

    def update(self, **fields) -> None:
        self.state.update(fields, updated=time.strftime("%Y-%m-%d %H:%M:%S"))
        write_json_atomic(self.path, self.state, default=str)


def run_pipeline(job: JobConfig, *, console: Console | None = None, tune_callbacks: list | None = None,
                 progress: bool = True) -> PipelineResult:
    """The whole job, after checks that take seconds (stores reachable, workspace writable), under
    the job's lock (one driver per job)."""
    console = console or Console()
    preflight(job)
    with job_lock(job, say=lambda message: console.print(f"[yellow]{message}[/]")):
        prepared = prepare_stage(job, progress=progress)  # the data is checked before Ray starts or a run file appears
        console.print(f"[green]✓[/] prepare  {prepared.meta.sizes}  fingerprint {prepared.meta.fingerprint[:12]}")
        return _run_stages(job, prepared, console=console, tune_callbacks=tune_callbacks, progress=progress)


def preflight(job: JobConfig) -> None:
    """AdarayError (one line) for a store or workspace the job cannot use, before Ray or any stage starts."""
    check_tracking_store(default_tracking_uri(job))
    check_transformer_inits(job.small_transformers, source=resolve_teacher_source(job.teacher.model))
    try:
        check_cluster(job.cluster)
    except ConnectionError as exc:
        raise AdarayError(f"{exc}; start it, or drop cluster.address (and RAY_ADDRESS) to run on a local Ray") from None
    try:
        job.workspace_path.mkdir(parents=True, exist_ok=True)
        probe = job.workspace_path / f".write-check-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise AdarayError(f"cannot write the workspace {job.workspace_path} ({exc.strerror}); set `workspace:` "
                          "in the job file to a writable folder") from None


def above_majority(prepared: PreparedData, *, score: float, margin: float, who: str, hint: str) -> float:
    """The majority-class dev score; AdarayError (one line) when `score` does not beat it by `margin`."""
    from workers.dataset import load_split
    from workers.metrics import majority_score

    meta = prepared.meta
    majority = majority_score(load_split(prepared.folder, "dev").labels, num_labels=meta.num_labels, metric=meta.metric)
    if score < majority + margin:
        raise AdarayError(f"{who} scores dev {METRIC_NAMES[meta.metric]} {score:.4f}, no better than always "
                          f"predicting the majority class ({majority:.4f}); {hint}")
    return majority


def _run_stages(job: JobConfig, prepared: PreparedData, *, console: Console, tune_callbacks: list | None,
                progress: bool) -> PipelineResult:
    status = StatusFile(job)
    status.update(stage="start", pid=os.getpid())
    write_text_atomic(job.run_dir / "job.yaml", dump_job(job))

    # -- teacher, cache ---------------------------------------------------------------------
    status.update(stage="data")
    with worker_errors():
        teacher = teacher_stage(job, prepared, progress=progress)
        check_transformer_inits(job.small_transformers, source=str(teacher.dir))  # a hub teacher's sizes, now known
        majority = above_majority(prepared, score=teacher.score_in(prepared.meta.metric),
                                  margin=job.budget.min_over_majority, who="the teacher",
                                  hint="train the teacher longer (teacher.epochs), with more data, or give a "
                                       "stronger teacher.model")
        resources = ensure_ray(job.cluster)
        console.print(f"[bold]adaray[/] job [cyan]{job.name}[/]: Ray with {resources['cpus']:g} CPUs, "
                      f"{resources['gpus']:g} GPUs")
        cache = cache_stage(job, prepared, teacher, progress=progress)
    metric_name = METRIC_NAMES[prepared.meta.metric]
    baseline = tfidf_logreg(prepared.folder)  # seconds: every job is measured against it
    console.print(f"[green]✓[/] teacher  dev {metric_name} {teacher.score_in(prepared.meta.metric):.4f} "
                  f"(majority class {majority:.4f}, TF-IDF + LR {baseline.dev:.4f})"
                  f"{'  (cache hit)' if teacher.cache_hit else ''}")
    console.print(f"[green]✓[/] cache    {cache.rows}  key {cache.key[:12]}{'  (cache hit)' if cache.cache_hit else ''}")
    tracker = Tracker(job, task_name=prepared.meta.task, say=lambda message: console.print(f"[yellow]{message}[/]"))
    if orphans := tracker.settle_orphans():
        console.print(f"[yellow]{orphans} MLflow runs left RUNNING by a dead driver are marked failed; the job "
                      "logs again those it reaches[/]")
    parent = tracker.parent_run()
    status.update(parent_run_id=parent, tracking_uri=tracker.uri, study=job.study_name)
    _log_parent(tracker, parent, job=job, prepared=prepared, teacher=teacher, cache=cache)
    tracker.log_metrics(parent, {f"tfidf_dev_{baseline.metric}": baseline.dev, f"tfidf_test_{baseline.metric}": baseline.test})
    refs = DataRefs(cache_uri=cache.uri, prepared_dir=str(prepared.folder), teacher_dir=str(teacher.dir))
    # The small transformers need no search: they train beside it, on the CPUs its trials and screens leave
    # free (the demo's member took 8 minutes of one CPU after the search, the other CPU idle once the cells were done).
    family = transformer_specs(job, cache_key=cache.key)
    family_retrains = start_retrains(job, family, refs=refs)
    if family:
        console.print(f"[bold]small transformers[/]: {len(family)} retraining beside the search")

    # -- outer loop -----------------------------------------------------------------------
    status.update(stage="outer_loop")
    hooks = LoopHooks(
        on_round_start=lambda r, k, n: (
            status.update(round=r + 1, rounds=job.outer_loop.rounds),
            console.print(f"[bold]round {r + 1}/{job.outer_loop.rounds}[/]: {k} configurations × "
                          f"{job.outer_loop.seeds} seeds = {n} Tune trials"),
        ),
        on_round_done=lambda r, results, outs: _log_round(tracker, parent, job=job, results=results, outcomes=outs,
                                                          console=console),
        on_note=lambda msg: console.print(f"[yellow]{msg}[/]"),
        tune_callbacks=[*(tune_callbacks or []), *( [_progress_callback(console)] if progress else [])],
        screen=lambda candidates: _screen(job, candidates, refs=refs, cache_key=cache.key, console=console,
                                          metric=prepared.meta.metric),
    )
    outcomes = run_outer_loop(job, refs=refs, hooks=hooks)
    if not outcomes:
        raise RuntimeError("the outer loop produced no successful configuration; see the Tune logs in "
                           f"{job.run_dir / 'tune'}")

    # -- retrain ----------------------------------------------------------------------------
    status.update(stage="retrain")
    finalists = finalist_specs(job, outcomes, cache_key=cache.key)
    own_epochs = "".join(f" ({t.name}: {t.epochs})" for t in job.small_transformers  # a member's own, when set
                         if t.train_epochs(job.retrain.epochs) != job.retrain.epochs)
    console.print(f"[bold]retrain[/]: the {len(finalists)} best of the screened students"
                  f"{f' and {len(family)} small transformers' if family else ''}, {job.retrain.epochs} epochs"
                  f"{own_epochs}")
    specs = family + finalists
    # At full fidelity the screen trained the finalists already, under these keys: say so, not "cache hit".
    screened = {s.key for s in finalists} if job.outer_loop.screen.is_full_retrain else set()

    def done(s: StudentSpec, m: dict, hit: bool) -> None:
        note = ("  (trained in the screen)" if s.key in screened else "  (cache hit)") if hit else ""
        console.print(f"  [green]✓[/] student {s.key} ({s.describe()}): dev {metric_name} {m['dev_metric']:.4f}{note}")

    metrics = retrain_students(job, finalists, refs=refs, on_done=done) | family_retrains.wait(done)
    if variants := variant_specs(job, specs):
        console.print(f"[bold]variants[/]: {' and '.join(job.variants)} of each student, scored and timed under "
                      "onnxruntime")
        metrics |= make_variants(variants, refs=refs, on_done=done)
        specs = specs + variants

    # -- latency, select ---------------------------------------------------------------------
    status.update(stage="select")
    if resources["started"]:  # no Ray work is left; its idle daemons made batch-1 timings 1.4-1.9x slower on 2 cores
        shutdown_if_owned()
    seq_len = prepared.meta.max_length
    console.print(f"[bold]latency[/]: the teacher and {len(specs)} students, timed side by side")
    timed = time_models({"teacher": teacher_timeable(teacher.dir, seq_len=seq_len, cache_dir=job.run_dir)}
                        | {s.key: student_timeable(s.out_dir, seq_len=seq_len) for s in specs},
                        seq_len=seq_len, repeats=job.retrain.latency_repeats)
    teacher_lat = timed["teacher"]
    candidates = [candidate_of(s, {**metrics[s.key], **timed[s.key]}, batch=job.budget.latency_batch,
                               teacher=teacher_lat) for s in specs]
    t_score = teacher.score_in(prepared.meta.metric)  # the one metric: students are scored in it too
    if job.cascade.defer:
        made, cascades = cascade_candidates(job, specs, candidates, refs=refs, teacher_dir=teacher.dir,
                                            t_score=t_score, console=console, metric_name=metric_name)
        specs, candidates = specs + made, candidates + cascades
    front, choice = select(candidates, budget=job.budget, teacher_score=t_score, metric_name=metric_name)
    b = job.budget.latency_batch
    plot = pareto_plot(candidates, front, choice.champion, job.run_dir / "pareto.png", teacher_score=t_score,
                       teacher_latency_ms=teacher_lat[f"latency_b{b}_mean_ms"], latency_batch=b,
                       metric_name=metric_name)
    table = selection_table(candidates, front, choice.champion, latency_batch=b, metric_name=metric_name)
    console.print(table)
    console.print(f"champion: {choice.reason}" + ("" if choice.met_budget else "  [yellow](budget not met)[/]"))
    tracker.log_artifact(parent, plot)
    tracker.log_text(parent, json.dumps([c.__dict__ for c in candidates], indent=2, default=str), "selection.json")

    # -- register -----------------------------------------------------------------------------
    above_majority(prepared, score=choice.champion.score, margin=job.budget.min_over_majority, who="the best student",
                   hint="retrain longer (retrain.epochs), add augmented copies (cache.augment.copies) or widen "
                        "the search; nothing was registered")
    status.update(stage="register")
    with deferred_interrupt():
        versions, kept = _register(job, tracker, parent, choice=choice, front=front, specs=specs, teacher=teacher,
                                   cache=cache, prepared=prepared)
    if kept:
        console.print(f"[yellow]{kept}[/]")
    tracker.log_metrics(parent, {f"champion_dev_{prepared.meta.metric}": choice.champion.score,
                                 "champion_latency_ms": choice.champion.latency_ms,
                                 "champion_params": choice.champion.params,
                                 "teacher_latency_ms": teacher_lat[f"latency_b{b}_mean_ms"]})
    tracker.finish(parent)
    result = PipelineResult(
        champion=choice.champion, choice=choice, front=front, candidates=candidates, teacher_score=t_score,
        teacher_latency_ms=teacher_lat[f"latency_b{b}_mean_ms"], teacher_params=teacher_lat["params"],
        teacher_latency=teacher_lat, baseline=baseline,
        model_name=tracker.model_name, champion_version=versions[choice.champion.key], parent_run_id=parent,
        alias_kept=kept,
    )
    status.update(stage="done", champion=choice.champion.key, champion_version=result.champion_version,
                  model=tracker.model_name)
    _print_summary(console, job, result)
    return result



def cascade_candidates(job: JobConfig, specs: list[StudentSpec], candidates: list[Candidate], *, refs: DataRefs,
                       teacher_dir: Path, t_score: float, console: Console, metric_name: str
                       ) -> tuple[list[StudentSpec], list[Candidate]]:
    """The budget's pick among `candidates` in front of the best of them, each at its fastest runtime, at each
    share of job.cascade.defer: built, scored as served and timed beside the teacher on dev's texts."""
    pick = pick_champion(candidates, budget=job.budget, teacher_score=t_score, metric_name=metric_name)
    pair = cascade_pair(candidates, front=pick.champion)
    if pair is None:
        console.print(f"[yellow]no cascade: no other student scores above the budget's pick ({pick.champion.key}) "
                      "at its fastest runtime[/]")
        return [], []
    by_key = {s.key: s for s in specs}
    made = cascade_specs(job, by_key[pair[0].key], by_key[pair[1].key])
    console.print(f"[bold]cascades[/]: {pair[0].key} answers the texts it is sure of, {pair[1].key} the "
                  f"{' / '.join(f'{d:.0%}' for d in job.cascade.defer)} of search_valid's it is least sure of")
    metrics = make_cascades(made, refs=refs, on_done=lambda s, m, hit: console.print(
        f"  [green]✓[/] cascade {s.key} ({s.describe()}): dev {metric_name} {m['dev_metric']:.4f}, "
        f"{m['deferred_dev']:.1%} of dev deferred{'  (cache hit)' if hit else ''}"))
    seq_len = read_meta(refs.prepared_dir).max_length
    # Beside the teacher again, under one plan: its own teacher figure, cached apart. A cascade's cost at batch 1
    # is the mean over as many texts as it is called on, so it is called on at least CASCADE_REPEATS.
    timed = time_models({"teacher": teacher_timeable(teacher_dir, seq_len=seq_len, cache_dir=job.run_dir / "cascades")}
                        | {s.key: cascade_timeable(s.out_dir, seq_len=seq_len, prepared_dir=Path(refs.prepared_dir))
                           for s in made}, seq_len=seq_len, repeats=max(job.retrain.latency_repeats, CASCADE_REPEATS))
    return made, [candidate_of(s, {**metrics[s.key], **timed[s.key]}, batch=job.budget.latency_batch,
                               teacher=timed["teacher"]) for s in made]


def _register(job: JobConfig, tracker: Tracker, parent: str, *, choice: Choice, front: list[Candidate],
              specs: list[StudentSpec], teacher, cache, prepared) -> tuple[dict[str, str], str | None]:
    """Register the champion and the front's best; move @champion unless a better version holds it.
    Returns ({student key: version}, why the alias stayed, or None)."""
    to_register = [choice.champion] + [c for c in front if c is not choice.champion][: job.budget.register_top - 1]
    versions = {}
    for c in to_register:
        spec = next(s for s in specs if s.key == c.key)
        run_id = _retrain_run(tracker, parent, job=job, spec=spec, metrics=c.metrics)
        versions[c.key] = tracker.register_student(
            run_id=run_id, student_dir=spec.out_dir, key=f"{job.name}/{c.key}", input_example=["a great movie"],
            tags=_lineage(job, c, spec=spec, teacher_dir=teacher.dir, cache_key=cache.key,
                          fingerprint=prepared.meta.labelled_key),  # same dev, same key: scores compare
        )
    return versions, tracker.promote("champion", versions[choice.champion.key], score=choice.champion.score)


def _screen(job: JobConfig, candidates: list[dict], *, refs: DataRefs, cache_key: str, console: Console,
            metric: str) -> dict[str, float]:
    screen = job.outer_loop.screen
    how = f"full KD retrains ({job.retrain.epochs} epochs)" if screen.is_full_retrain else \
        f"{screen.epochs}-epoch KD retrains"
    console.print(f"  screening {len(candidates)} candidates: {how}")
    return screen_candidates(
        job, candidates, refs=refs, cache_key=cache_key,
        on_done=lambda s, m, hit: console.print(
            f"    candidate {s.key} ({origin(s.figures)}): inherited {s.figures['score']:.4f} → screened dev "
            f"{METRIC_NAMES[metric]} {m['dev_metric']:.4f}{'  (cache hit)' if hit else ''}"),
    )


def _progress_callback(console: Console) -> TrialProgress:
    def on_event(kind: str, info: dict) -> None:
        t = info["trial"]
        name = f"config {t['config_number']} seed {t['search']['seed']}"
        if kind == "result":
            r = info["result"]
            console.print(f"  {name}: epoch {r.get('epoch')} search-valid {r.get('search_valid_score', 0):.4f} "
                          f"derived params {r.get('derived_params', 0):,.0f}"
                          f"{'  [yellow]collapse: ' + str(r.get('collapse_reason')) + '[/]' if r.get('collapse') else ''}")
        elif kind == "error":
            console.print(f"  [red]{name}: trial failed (Tune retries it from its checkpoint)[/]")

    return TrialProgress(on_event)


def _log_parent(tracker: Tracker, run_id: str, *, job, prepared, teacher, cache) -> None:
    tracker.log_params(run_id, {"job": job.model_dump(mode="json")})
    tracker.set_tags(run_id, {"adaray.teacher": str(teacher.dir), "adaray.teacher_key": teacher.key,
                              "adaray.cache_key": cache.key, "adaray.cache_uri": cache.uri,
                              "adaray.data_fingerprint": prepared.meta.fingerprint, "adaray.task": prepared.meta.task,
                              # Two runs of one job differ where these do (the CPU and its ISA move the teacher and timings).
                              "adaray.hardware": hardware_name("cpu"),
                              "adaray.teacher_hardware": (teacher.training or {}).get("hardware", "not recorded")})
    # Named by the teacher's metric: the task's, or accuracy for a teacher saved before it was kept.
    tracker.log_metrics(run_id, {f"teacher_dev_{teacher.metric}": teacher.dev_score,
                                 **{f"probe_{teacher.metric}_layer_{i}": s for i, s in enumerate(teacher.probe_scores)}})
    for name in ("probes.png", "probes.json"):
        if (teacher.dir / name).is_file() and tracker.find_run(f"{job.name}/parent/{name}") is None:
            tracker.log_artifact(run_id, teacher.dir / name, artifact_path="teacher")


def _log_round(tracker: Tracker, parent: str, *, job: JobConfig, results, outcomes: list[ConfigOutcome],
               console: Console) -> None:
    """Child run per configuration, nested run per trial (params, per-epoch metrics, genotype, cell)."""
    by_config = {o.number: o for o in outcomes}
    for number, outcome in by_config.items():
        _config_run(tracker, parent, job=job, outcome=outcome)
        console.print(f"  config {number}: screened dev {outcome.score:.4f}, agreement {outcome.agreement:.2f}"
                      f"{', collapse' if outcome.collapse else ''}  {outcome.params}")
    for trial, metrics, history in results:
        number = trial["config_number"]
        config_run, _ = tracker.ensure_run(f"{job.name}/config-{number}", name=f"config-{number}", role="config",
                                           parent_id=parent)
        key = f"{job.name}/config-{number}/seed-{trial['seed_index']}"
        run_id, to_log = tracker.ensure_run(key, name=f"config-{number}-seed-{trial['search']['seed']}",
                                            role="trial", parent_id=config_run)
        if not to_log:
            continue
        tracker.log_params(run_id, {"search": trial["search"], "space": trial["space"]})
        for row in history:
            tracker.log_metrics(run_id, {k: v for k, v in row.items() if k in _EPOCH_METRICS}, step=int(row.get("epoch", 0)))
        if metrics:
            tracker.log_text(run_id, metrics["genotype"], "genotype.json")
            picture = Path(trial.get("_tmp", job.run_dir / "cells")) / f"config{number}-seed{trial['seed_index']}.png"
            tracker.log_artifact(run_id, cell_plot(Genotype.from_json(metrics["genotype"]), picture))
        tracker.finish(run_id, failed=metrics is None)


_EPOCH_METRICS = {"search_valid_score", "best_candidate_score", "expected_params", "expected_flops", "expected_latency_ms", "derived_params",
                  "derived_flops", "alpha_entropy", "skip_share", "zero_share", "collapse", "tau", "loss", "loss_ce",
                  "loss_kd", "loss_eff"}


def _config_run(tracker: Tracker, parent: str, *, job: JobConfig, outcome: ConfigOutcome) -> str:
    """The configuration's run, logged and finished unless it already is: after its round, or at
    retrain when a rerun took the round from Optuna but the tracking store lost its runs."""
    config_run, to_log = tracker.ensure_run(f"{job.name}/config-{outcome.number}", name=f"config-{outcome.number}",
                                            role="config", parent_id=parent)
    if to_log:
        tracker.log_params(config_run, {**outcome.params, "round": outcome.round})
        tracker.log_metrics(config_run, {"short_retrain_dev_score": outcome.score, "cost": outcome.cost,
                                         "genotype_agreement": outcome.agreement, "collapse": outcome.collapse})
        tracker.log_text(config_run, outcome.genotype, "genotype.json")
        tracker.log_text(config_run, json.dumps(list(outcome.candidates), indent=2), "candidates.json")
        tracker.finish(config_run)
    return config_run


def _retrain_run(tracker: Tracker, parent: str, *, job: JobConfig, spec: StudentSpec, metrics: dict) -> str:
    """The student's run: under its configuration's run, or under the job's for a small transformer."""
    above = parent if spec.outcome is None else _config_run(tracker, parent, job=job, outcome=spec.outcome)
    run_id, to_log = tracker.ensure_run(f"{job.name}/student-{spec.key}", name=f"student-{spec.key}",
                                        role="retrain", parent_id=above)
    if to_log:
        arch = {"space": spec.space} if spec.transformer is None else {"transformer": spec.transformer}
        made = {"variant": spec.variant, "parent_student": spec.parent.key} if spec.parent else {}
        if spec.back is not None:
            made |= {"back_student": spec.back.key, "defer": spec.defer}
        tracker.log_params(run_id, {"retrain": job.retrain.model_dump(mode="json"), **arch, **made})
        tracker.log_metrics(run_id, {**metrics, "inherited_score": spec.figures["score"] if spec.figures else None,
                                     "short_retrain_dev_score": spec.figures.get("short_score") if spec.figures else None})
        tracker.log_text(run_id, spec.arch_json, "genotype.json" if spec.transformer is None else "transformer.json")
        tracker.finish(run_id)
    return run_id


def candidate_of(spec: StudentSpec, metrics: dict, *, batch: int, teacher: dict) -> Candidate:
    """`spec` on the front: its scores and timing in `metrics`, its speed-up over `teacher` (timed beside it)."""
    return Candidate(
        key=spec.key, config_number=spec.outcome.number if spec.outcome else None, genotype=spec.arch_json,
        score=metrics["dev_metric"],  # the teacher's timing beside it: what its speed-up is over
        metrics={**metrics, **{f"teacher_latency_b{b}_mean_ms": teacher[f"latency_b{b}_mean_ms"] for b in (1, 128)}},
        latency_ms=metrics[f"latency_b{batch}_mean_ms"], latency_p95_ms=metrics[f"latency_b{batch}_p95_ms"],
        params=int(metrics["params"]), student_dir=str(spec.out_dir),
        params_of_config=spec.outcome.params if spec.outcome else {}, route=spec.route,
        speedup=speedup(metrics, teacher), origin=spec.origin,
    )


def origin(candidate: dict) -> str:
    """Where a screened genotype came from: the search's alpha, or a uniform draw riding along with it."""
    return "random draw" if candidate.get("source") == "random" else "search"


def _lineage(job: JobConfig, c: Candidate, *, spec: StudentSpec, teacher_dir: Path, cache_key: str,
             fingerprint: str) -> dict:
    search = spec.outcome.search if spec.outcome else {}  # a small transformer had no search
    seeds = [spec.figures["seed"]] if spec.figures and spec.figures.get("seed") is not None else []
    return {
        "teacher": str(teacher_dir), "cache_key": cache_key, "data_fingerprint": fingerprint,
        "genotype": spec.genotype, "transformer": spec.arch_json if spec.transformer else "",
        "beta": search.get("beta", ""), "gamma": search.get("gamma", ""), "route": c.route,
        "embed_dim": spec.space.get("embed_dim") or (spec.transformer or {}).get("hidden", ""),
        "embedding_rank": spec.space.get("embedding_rank") or (spec.transformer or {}).get("embedding_rank") or "",
        "embedding_kronecker": spec.space.get("embedding_kronecker") or "",
        "origin": origin(spec.figures or {}) if spec.outcome else "small-transformer family",
        "variant": spec.variant or "", "parent_student": spec.parent.key if spec.parent else "",
        "back_student": spec.back.key if spec.back else "",
        "runtime": c.metrics.get("runtime", "torch"),
        "seed": seeds[0] if seeds else search.get("seed", ""),
        "config_number": spec.outcome.number if spec.outcome else "",
        "metric": c.metrics["metric"], "dev_score": c.score, "test_score": c.metrics["test_metric"], "params": c.params,
        "flops": c.metrics.get("flops"), f"latency_b{job.budget.latency_batch}_mean_ms": c.latency_ms,
        f"latency_b{job.budget.latency_batch}_p95_ms": c.latency_p95_ms,  # what the budget reads
        "speedup": c.speedup,  # over the teacher timed beside it, the lesser of batch 1 and 128: min_speedup reads it
        "latency_hardware": c.metrics.get("hardware") or hardware_name("cpu"), "job": job.name,
    }


def selection_table(candidates: list[Candidate], front: list[Candidate], champion: Candidate, *,
                    latency_batch: int, metric_name: str) -> Table:
    table = Table(title="Retrained students (x teacher: times faster than the teacher, the lesser of batch 1 and 128)")
    for col in ("student", "route", "config", f"dev {metric_name}", f"b{latency_batch} ms (mean/p95)",
                "x teacher", "params", "front"):
        table.add_column(col, justify="right" if col not in ("student", "route", "front") else "left")
    on_front = {c.key for c in front}
    for c in sorted(candidates, key=lambda c: -c.score):
        mark = "★ champion" if c.key == champion.key else ("✓" if c.key in on_front else "")
        table.add_row(c.key, c.route, "-" if c.config_number is None else str(c.config_number), f"{100 * c.score:.2f}",
                      f"{c.latency_ms:.2f}/{c.latency_p95_ms:.2f}", "-" if c.speedup is None else f"{c.speedup:.1f}",
                      f"{c.params:,}", mark)
    return table


def _print_summary(console: Console, job: JobConfig, r: PipelineResult) -> None:
    c = r.champion
    console.rule("[bold]done")
    if r.alias_kept:
        console.print(f"this job's best: [bold]{r.model_name}/{r.champion_version}[/] (student {c.key}); {r.alias_kept}")
    else:
        console.print(f"champion: [bold]{r.model_name}@champion[/] (version {r.champion_version}, student {c.key})")
    metric = METRIC_NAMES[c.metrics.get("metric", "accuracy")]
    console.print(f"  dev {metric} {100 * c.score:.2f}% (teacher {100 * r.teacher_score:.2f}%, "
                  f"{100 * c.score / r.teacher_score:.1f}% retained)")
    gain = 100 * (c.score - r.baseline.dev)
    console.print(f"  {gain:+.2f} points over TF-IDF + logistic regression on the same split "
                  f"({100 * r.baseline.dev:.2f}%)" + ("" if gain > 0 else
                  "  [yellow]: this student is no better than the baseline a user would try first[/]"))
    runtime = c.metrics.get("runtime", "torch")
    if runtime == "cascade":
        m = c.metrics
        console.print(f"  a cascade: {m['front']} ({100 * m['front_dev_metric']:.2f}% alone) answers, {m['back']} "
                      f"({100 * m['back_dev_metric']:.2f}% alone) takes the {m['deferred_dev']:.1%} of dev it is least "
                      "sure of")
    for batch in (1, 128):  # the mean per call, as the budget reads it
        mine, theirs = c.metrics[f"latency_b{batch}_mean_ms"], c.metrics[f"teacher_latency_b{batch}_mean_ms"]
        console.print(f"  {theirs / mine:.1f}x faster than the teacher at batch {batch} ({mine:.2f} ms vs {theirs:.2f} ms)"
                      + ("" if runtime in ("torch", "cascade") else f"; the student under {runtime}, the teacher under torch"))
    console.print(f"  {c.params / 1e6:.2f}M params ({r.teacher_params / max(c.params, 1):.1f}x smaller)")
    console.print(f"  pull it:      adaray pull {r.model_name}@champion -o student/")
    console.print(f"  MLflow UI:    {ui_command(job)}")
