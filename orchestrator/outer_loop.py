"""The Optuna outer loop: ask K configurations per round, run each over S seeds as Tune trials,
tell the aggregated result back.

Explicit ask/tell keeps Optuna on the driver and Tune flat: one Tune experiment per round, a grid
over the round's (configuration, seed) pairs. Everything is resumable: the study lives in
persistent storage and records each configuration's round; a round whose Tune experiment exists
on disk is restored (finished trials are not rerun, crashed ones resume from their checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import optuna
from ray import tune

from cluster.connect import trial_resources
from orchestrator.config import SEARCHABLE, JobConfig, ParamRange
from orchestrator.errors import Interrupted
from orchestrator.faults import CRASH_ENV, TuneCrashPoints, crash_point

optuna.logging.set_verbosity(optuna.logging.WARNING)
logger = logging.getLogger(__name__)

DIRECTIONS = {"score": "maximize", "latency": "minimize", "params": "minimize"}
# The cost told to Optuna: a student's FLOPs stand in for latency (measured latency needs the
# final student; selection uses the measured figures).
COST_METRIC = {"latency": "flops", "params": "params"}
# A screened candidate: {"genotype" (JSON), "score" (inherited, search_valid), "params", "flops",
# "short_score" (dev, after the short retrain), "seed"}.
Screen = Callable[[list[dict]], dict[str, float]]  # candidates -> {candidate_id: short-retrain dev score}


def candidate_id(candidate: dict) -> str:
    """A candidate's identity: its genotype in its search space (configurations may differ in space)."""
    return json.dumps([json.loads(candidate["genotype"]), candidate["space"]], sort_keys=True)


@dataclass(frozen=True)
class DataRefs:
    """Where trials find their data: paths and URIs only, never the data itself."""

    cache_uri: str
    prepared_dir: str
    teacher_dir: str


@dataclass(frozen=True)
class ConfigOutcome:
    """One configuration's result: the student it yields, chosen over its seeds' candidates."""

    number: int  # Optuna trial number
    round: int
    params: dict
    space: dict
    search: dict
    score: float  # the chosen student's short-retrain dev score (the task's metric)
    cost: float  # its COST_METRIC
    agreement: float  # share of seeds whose best candidate is the modal one
    collapse: bool  # majority of seeds flagged collapse
    genotype: str  # the chosen student's genotype (JSON)
    seeds: tuple[dict, ...]  # each seed's last metrics
    candidates: tuple[dict, ...] = ()  # the screened candidates, best short score first


def storage_url(job: JobConfig) -> str:
    job.workspace_path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(job.workspace_path / 'optuna.db').resolve()}"


def open_study(job: JobConfig) -> optuna.Study:
    return optuna.create_study(
        study_name=job.study_name, storage=storage_url(job), load_if_exists=True,
        directions=[DIRECTIONS[o] for o in job.outer_loop.objectives],
        sampler=optuna.samplers.TPESampler(seed=job.outer_loop.sampler_seed),
    )


def distribution(r: ParamRange) -> optuna.distributions.BaseDistribution:
    if r.choices is not None:
        return optuna.distributions.CategoricalDistribution(r.choices)
    if r.int:
        return optuna.distributions.IntDistribution(int(r.low), int(r.high), log=r.log)
    return optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)


def trial_configs(job: JobConfig, *, number: int, round_index: int, params: dict, refs: DataRefs) -> list[dict]:
    """The S Tune-trial configs of one configuration: job defaults + the sampled params + a seed."""
    layers = {"search": {**job.search.model_dump(), **_pool_sizes(job)}, "space": _space_dict(job)}
    for name, value in params.items():
        layer, field = SEARCHABLE[name]
        layers[layer][field] = value
    return [
        {
            "config_number": number, "round": round_index, "seed_index": s,
            "space": layers["space"], "search": {**layers["search"], "seed": job.search.seed + s, "draw_stream": number},
            "cache_uri": refs.cache_uri, "prepared_dir": refs.prepared_dir, "teacher_dir": refs.teacher_dir,
            "max_train_examples": job.search.max_train_examples,
        }
        for s in range(job.outer_loop.seeds)
    ]


def _pool_sizes(job: JobConfig) -> dict:
    """What each trial reports: under `allocate: measured` enough of either source to fill a configuration's
    screen slots with it alone (a uniform draw costs one inherited-score pass over search_valid). Without
    uniform draws (`search.random_candidates: 0`) there is nothing to measure alpha against."""
    if job.outer_loop.screen.allocate == "fixed" or not job.search.random_candidates:
        return {}
    slots = job.outer_loop.screen.top + job.search.random_candidates
    return {"report_candidates": max(job.search.report_candidates, slots), "random_candidates": slots}


def _space_dict(job: JobConfig) -> dict:
    space = job.space.to_dict()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in space.items()}


def _run_trial(config: dict) -> None:
    from workers.search_trial import search_trainable  # imported in the trial's worker process

    # Tune's per-checkpoint INFO lines would echo on the driver for every epoch of every trial.
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    search_trainable(config["trial"])


def _trial_dirname(trial) -> str:
    t = trial.config["trial"]
    return f"config{t['config_number']}-seed{t['seed_index']}"


class TrialProgress(tune.Callback):
    """Forwards Tune trial events to a callable (the CLI's progress display)."""

    def __init__(self, on_event: Callable[[str, dict], None]) -> None:
        self.on_event = on_event

    # Tune pickles its run config for restore; the display belongs to this driver, not the state.
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.on_event = lambda kind, info: None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.on_event("result", {"trial": trial.config["trial"], "result": result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.on_event("complete", {"trial": trial.config["trial"]})

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_event("error", {"trial": trial.config["trial"]})


# Tune reads these from the driver's environment. Short search epochs checkpoint every few seconds: on local
# storage that is cheap, and the "snapshotting may become a bottleneck" warning would only bury our progress
# lines. Tune's newer console output prints its config box, "View detailed results here" and a TensorBoard hint
# even at verbose=0; the classic reporter at verbose=0 prints nothing.
QUIET_TUNE_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", "RAY_AIR_NEW_OUTPUT": "0"}


def run_round(
    job: JobConfig, *, round_index: int, trial_dicts: list[dict], callbacks: list | None = None
) -> list[tuple[dict, dict | None, list[dict]]]:
    """Run (or restore) one round's Tune experiment. Returns (trial config, last metrics, history)."""
    storage = (job.run_dir / "tune").resolve()
    name = f"round-{round_index}"
    trainable = tune.with_resources(_run_trial, trial_resources(job.cluster))
    path = storage / name
    callbacks = [*(callbacks or []), TuneCrashPoints(name)] if os.environ.get(CRASH_ENV) else callbacks

    def fresh() -> tune.Tuner:
        return tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trial_dicts)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=job.cluster.max_concurrent_trials, trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage), verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=job.cluster.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )

    restored = _restore(path, trainable) if tune.Tuner.can_restore(str(path)) else None
    try:
        grid = _fit(restored or fresh())
    except Exception as exc:
        if restored is None:
            raise
        # A driver killed while Tune set the round up can leave state that restores but cannot run
        # (e.g. trials without their config): the round counts as not started, from Optuna's asked configs.
        _set_aside(path, reason=f"{type(exc).__name__}: {exc}")
        grid = _fit(fresh())
    out = []
    for result in grid:
        trial = (result.config or {}).get("trial")
        if trial is None or (result.error is None and (result.metrics or {}).get("epoch") != trial["search"]["epochs"]):
            # Never started, or neither failed nor finished: Tune was interrupted. Its state on disk resumes the round.
            raise Interrupted(f"round {round_index} interrupted")
        history = [] if result.metrics_dataframe is None else result.metrics_dataframe.to_dict("records")
        metrics = None if result.error is not None or not result.metrics else dict(result.metrics)
        out.append((trial, metrics, history))
    return out


def _fit(tuner: tune.Tuner):
    handler = signal.getsignal(signal.SIGINT)
    quiet = {k: v for k, v in QUIET_TUNE_ENV.items() if k not in os.environ}  # a user's own setting wins
    try:
        with mock.patch.dict(os.environ, quiet):  # for this fit only: the driver's environment is left as it was
            return tuner.fit()  # on Ctrl-C, Tune stops the trials, saves the experiment and returns
    finally:
        signal.signal(signal.SIGINT, handler)  # Tune leaves its own handler installed: Ctrl-C after fit must stop us


def _set_aside(path: Path, *, reason: str) -> None:
    aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    path.rename(aside)
    logger.warning("Tune state of %s cannot be resumed (%s); moved it to %s and starting the round afresh",
                   path, reason, aside)


def _restore(path: Path, trainable) -> tune.Tuner | None:
    """The round's experiment as Tune saved it; None (the folder set aside) if its state is unreadable,
    e.g. a driver killed while Tune wrote it."""
    # The saved trials name their trainable; a fresh driver must know that name before unpickling them.
    tune.register_trainable(_run_trial.__name__, trainable)
    try:
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    except (EOFError, pickle.UnpicklingError, KeyError) as exc:
        _set_aside(path, reason=f"{type(exc).__name__}: {exc}")
        return None


def candidates_to_screen(job: JobConfig, seeds: list[dict | None], *, lead: str | None = None) -> list[dict]:
    """The configuration's candidates for the short retrain, from every seed's reported pool, one entry
    per genotype (its best inherited score). With no `lead`: alpha's best `screen.top`, then each seed's first
    `search.random_candidates` uniform draws. With a lead ("alpha" or "random", from `leading_source`): as many
    slots, all filled from that source (alpha's best, or the seeds' draws in the order drawn), the other
    filling in only where it runs short."""
    best: dict[str, dict] = {}
    drawn: list[tuple[int, str]] = []  # (its index among its seed's draws, candidate_id)
    for m in seeds:
        if m is None:
            continue
        pool = json.loads(m.get("candidates") or "[]") or [
            {"genotype": m["genotype"], "score": m["search_valid_score"], "params": m["derived_params"],
             "flops": m["derived_flops"]}]
        draws = [c for c in pool if c.get("source") == "random"]
        for c in pool:
            c = {**c, "seed": m.get("seed"), "space": m["space"]}
            if candidate_id(c) not in best or c["score"] > best[candidate_id(c)]["score"]:
                best[candidate_id(c)] = c
        drawn += [(i, candidate_id({**c, "space": m["space"]})) for i, c in enumerate(draws)]

    def by_score(ids: list[str]) -> list[str]:
        return sorted(dict.fromkeys(ids), key=lambda i: (-best[i]["score"], best[i]["flops"]))

    alpha = by_score([i for i, c in best.items() if c.get("source", "alpha") == "alpha"])
    unleaded = list(dict.fromkeys(alpha[: job.outer_loop.screen.top]
                                  + by_score([i for k, i in drawn if k < job.search.random_candidates])))
    if lead is None:
        chosen = unleaded
    else:
        in_order = list(dict.fromkeys(i for _, i in sorted(drawn, key=lambda d: d[0])))  # draw 1 of every seed first
        first, then = (in_order, alpha) if lead == "random" else (alpha, in_order)
        chosen = list(dict.fromkeys(first + then))[: len(unleaded)]
    return [best[i] for i in chosen]


MIN_SCREENED = 2  # screened students each source needs before its mean can lead (a variance needs 2)


def leading_source(outcomes: list[ConfigOutcome]) -> tuple[str | None, dict[str, list[float]]]:
    """Which source's screened students scored higher on the mean over `outcomes`' candidates, "alpha" (the
    search) or "random" (uniform draws), when the gap is more than one standard error of the difference; None
    while either has fewer than 2 screened students or the gap is within that noise (one retrain's dev score
    moved about 0.9 points across retrain seeds here). With it, the screened scores by source."""
    scores: dict[str, list[float]] = {"alpha": [], "random": []}
    for o in outcomes:
        for c in o.candidates:
            if "short_score" in c:
                scores[c.get("source", "alpha")].append(c["short_score"])
    if min(len(v) for v in scores.values()) < MIN_SCREENED:
        return None, scores
    gap = statistics.fmean(scores["random"]) - statistics.fmean(scores["alpha"])
    noise = sum(statistics.variance(v) / len(v) for v in scores.values()) ** 0.5
    return (None if abs(gap) <= noise else "random" if gap > 0 else "alpha"), scores


def aggregate(job: JobConfig, *, trial_dicts: list[dict], seeds: list[dict | None], number: int, round_index: int,
              params: dict, short_scores: dict[str, float], lead: str | None = None) -> ConfigOutcome | None:
    """The student a configuration yields: its best candidate (`candidates_to_screen` with `lead`) by short-retrain
    score (`short_scores`, candidate_id -> dev score). None when every seed failed."""
    done = [m for m in seeds if m is not None]
    if not done:
        return None
    screened = [{**c, "short_score": short_scores[candidate_id(c)]} for c in candidates_to_screen(job, seeds, lead=lead)]
    screened.sort(key=lambda c: (-c["short_score"], c["flops"]))
    chosen = screened[0]
    tops = Counter(m.get("best_candidate", m["genotype"]) for m in done)
    return ConfigOutcome(
        number=number, round=round_index, params=params, space=trial_dicts[0]["space"],
        search={k: v for k, v in trial_dicts[0]["search"].items() if k not in ("seed", "draw_stream")},
        score=chosen["short_score"], cost=chosen[COST_METRIC[job.outer_loop.objectives[1]]],
        agreement=tops.most_common(1)[0][1] / len(seeds),
        collapse=sum(bool(m.get("collapse")) for m in done) * 2 > len(done),
        genotype=chosen["genotype"],
        seeds=tuple({**_summary(m), "seed": t["search"]["seed"]} for t, m in zip(trial_dicts, seeds) if m),
        candidates=tuple(screened),
    )


_SUMMARY_KEYS = ("search_valid_score", "derived_params", "derived_flops", "genotype", "best_candidate",
                 "best_candidate_score", "collapse", "collapse_reason", "alpha_entropy", "skip_share", "zero_share",
                 "epoch", "cpu_seconds")


def _summary(metrics: dict) -> dict:
    return {k: metrics[k] for k in _SUMMARY_KEYS if k in metrics}


def _outcome_from_trial(t: optuna.trial.FrozenTrial) -> ConfigOutcome:
    a = t.user_attrs
    return ConfigOutcome(
        number=t.number, round=a["round"], params=t.params, space=a["space"], search=a["search"],
        score=t.values[0], cost=t.values[1], agreement=a["agreement"], collapse=a["collapse"],
        genotype=a["genotype"], seeds=tuple(a["seeds"]), candidates=tuple(a.get("candidates", ())),
    )


@dataclass
class LoopHooks:
    """What the pipeline wants to hear about while the loop runs (all optional)."""

    on_round_start: Callable[[int, int, int], None] | None = None  # (round, configs, trials)
    on_round_done: Callable[[int, list[tuple[dict, dict | None, list[dict]]], list[ConfigOutcome]], None] | None = None
    on_note: Callable[[str], None] | None = None  # a budget stop, the screen's allocation
    tune_callbacks: list | None = None
    # The short retrain of candidates (the pipeline's Ray tasks); without it, the inherited score stands in.
    screen: Screen | None = None


def run_outer_loop(job: JobConfig, *, refs: DataRefs, hooks: LoopHooks | None = None) -> list[ConfigOutcome]:
    """All rounds, resuming whatever a previous driver left. Returns every configuration's outcome."""
    hooks = hooks or LoopHooks()
    loop = job.outer_loop
    study = open_study(job)
    dists = {name: distribution(r) for name, r in loop.params.items()}
    outcomes: list[ConfigOutcome] = []
    started, trials_run = time.monotonic(), 0
    for r in range(loop.rounds):
        mine = [t for t in study.trials if t.user_attrs.get("round") == r]
        # A failed configuration (every seed's trial raised) is asked again with its params on the next run:
        # whatever made it fail may have been fixed since.
        live = [t for t in mine if t.state != optuna.trial.TrialState.FAIL]
        told_before = [t for t in live if t.state == optuna.trial.TrialState.COMPLETE]
        outcomes += [_outcome_from_trial(t) for t in told_before]
        trials_run += len(told_before) * loop.seeds
        if len(told_before) == len(live) >= loop.configs_per_round:
            continue
        if not mine:  # a round not yet begun: check the budget first
            if loop.max_trials is not None and trials_run + loop.configs_per_round * loop.seeds > loop.max_trials:
                _say(hooks, f"budget: {trials_run} trials ran; another round would pass max_trials={loop.max_trials}")
                break
            if loop.max_wall_minutes is not None and (time.monotonic() - started) / 60 >= loop.max_wall_minutes:
                _say(hooks, f"budget: {loop.max_wall_minutes} minutes of wall time spent")
                break
        # Configurations a dead driver asked but never told are rerun with the same params.
        pending = [optuna.Trial(study, t._trial_id) for t in live if not t.state.is_finished()]
        retry = list({json.dumps(t.params, sort_keys=True): t.params for t in mine
                      if t.state == optuna.trial.TrialState.FAIL}.values())
        for i in range(loop.configs_per_round - len(live)):
            if i < len(retry):
                study.enqueue_trial(retry[i])
            trial = study.ask(dists)
            trial.set_user_attr("round", r)
            pending.append(trial)
        refs_dicts = {t.number: trial_configs(job, number=t.number, round_index=r, params=t.params, refs=refs)
                      for t in pending}
        all_dicts = [d for ds in refs_dicts.values() for d in ds]
        if hooks.on_round_start:
            hooks.on_round_start(r, len(pending), len(all_dicts))
        crash_point(f"round-{r}-asked")
        results = run_round(job, round_index=r, trial_dicts=all_dicts, callbacks=hooks.tune_callbacks)
        crash_point(f"round-{r}-trials-done")
        by_key = {(c["config_number"], c["seed_index"]): m for c, m, _ in results}
        seeds_of = {trial.number: [_with_seed(by_key.get((trial.number, d["seed_index"])), d)
                                   for d in refs_dicts[trial.number]] for trial in pending}
        lead = _lead(job, hooks, [o for o in outcomes if o.round < r], round_index=r)
        short_scores = _screen(job, hooks, [c for seeds in seeds_of.values()
                                            for c in candidates_to_screen(job, seeds, lead=lead)])
        told = {}
        for trial in pending:
            told[trial.number] = aggregate(job, trial_dicts=refs_dicts[trial.number], seeds=seeds_of[trial.number],
                                           number=trial.number, round_index=r, params=trial.params,
                                           short_scores=short_scores, lead=lead)
        round_outcomes = [o for o in told.values() if o is not None]
        # Log before telling: a driver that dies in between reruns this round from Tune's state on
        # disk (no retraining) and the idempotent logging fills in whatever is missing.
        if hooks.on_round_done:
            hooks.on_round_done(r, results, round_outcomes)
        for trial in pending:
            outcome = told[trial.number]
            if outcome is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            for key, value in (("space", outcome.space), ("search", outcome.search), ("genotype", outcome.genotype),
                               ("agreement", outcome.agreement), ("collapse", outcome.collapse),
                               ("seeds", list(outcome.seeds)), ("candidates", list(outcome.candidates))):
                trial.set_user_attr(key, value)
            study.tell(trial, [outcome.score, outcome.cost])
        trials_run += len(all_dicts)
        if not round_outcomes and not told_before:  # the next round would fail the same way: stop before spending it
            raise RuntimeError(f"every trial of round {r + 1} failed; their errors are in {job.run_dir / 'tune' / f'round-{r}'}")
        outcomes += round_outcomes
    return outcomes


def _with_seed(metrics: dict | None, trial_dict: dict) -> dict | None:
    return None if metrics is None else {**metrics, "seed": trial_dict["search"]["seed"], "space": trial_dict["space"]}


def _screen(job: JobConfig, hooks: LoopHooks, candidates: list[dict]) -> dict[str, float]:
    """{candidate_id: short-retrain dev score} of the round's candidates (each one once)."""
    unique = list({candidate_id(c): c for c in candidates}.values())
    if hooks.screen is None:
        return {candidate_id(c): c["score"] for c in unique}
    return hooks.screen(unique)


def _lead(job: JobConfig, hooks: LoopHooks, earlier: list[ConfigOutcome], *, round_index: int) -> str | None:
    """The source that gets round `round_index`'s screen slots under `allocate: measured` (from the rounds before
    it only, so a resumed round allocates as it first did); None: the fixed mix."""
    if job.outer_loop.screen.allocate == "fixed":
        return None
    lead, scores = leading_source(earlier)
    if min(len(v) for v in scores.values()) >= MIN_SCREENED:  # a decision to report, either way
        means = {k: f"{statistics.fmean(v):.4f} over {len(v)}" for k, v in scores.items()}
        spend = f"go to {_SOURCES[lead]}" if lead else "keep their mix (the gap is within one standard error)"
        _say(hooks, f"round {round_index + 1}: the screen's slots {spend}: screened so far, uniform draws "
                    f"{means['random']}, alpha's candidates {means['alpha']} (mean dev score)")
    return lead


_SOURCES = {"alpha": "alpha's candidates", "random": "uniform draws"}


def _say(hooks: LoopHooks, message: str) -> None:
    if hooks.on_note:
        hooks.on_note(message)


def study_summary(job: JobConfig) -> list[dict]:
    """Every configuration in the study, for `adaray status` (read-only: creates no store)."""
    if not (job.workspace_path / "optuna.db").is_file():
        return []
    try:
        study = optuna.load_study(study_name=job.study_name, storage=storage_url(job))
    except KeyError:
        return []
    return [
        {"number": t.number, "round": t.user_attrs.get("round"), "state": t.state.name, "values": t.values,
         "params": t.params, "agreement": t.user_attrs.get("agreement"), "collapse": t.user_attrs.get("collapse")}
        for t in study.trials
    ]
