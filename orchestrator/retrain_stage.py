"""Retrain students as Ray tasks: the retrains that screen candidates (short or full), full ones for the finalists.

Students train in parallel; their latency is measured afterwards on the driver, side by side
(orchestrator/measure.py), so no measurement shares the CPU with another student's training. Each student's folder is keyed by
(genotype, space, cache key, retrain config): a re-run finds it and skips the training. The job's
serving variants (ONNX exports) are made after, on the driver, in folders beside their parents'.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import ray

from cluster.connect import ensure_ray
from orchestrator.config import JobConfig
from orchestrator.outer_loop import ConfigOutcome, DataRefs, candidate_id
from search_space.config import SearchSpaceConfig, TransformerConfig
from search_space.cost import genotype_params_flops
from search_space.genotype import Genotype
from workers.config import RETRAIN_RECIPE, RetrainConfig
from workers.student_files import METRICS_FILE


@dataclass(frozen=True)
class StudentSpec:
    key: str
    genotype: str  # JSON
    space: dict
    retrain: RetrainConfig
    out_dir: Path
    outcome: ConfigOutcome | None = None  # the configuration that yielded it (finalists only)
    figures: dict | None = None  # what the earlier fidelities measured (inherited and short scores)
    transformer: dict | None = None  # a member of the small-transformer family; genotype and space are then empty
    variant: str | None = None  # a serving variant (workers.config.Variant) of `parent`, made by export, not training
    parent: StudentSpec | None = None
    back: StudentSpec | None = None  # a cascade's: `parent` answers, `back` takes the texts it is least sure of
    defer: float | None = None  # a cascade's share of search_valid's texts handed to `back`

    @property
    def origin(self) -> str:
        """The key of the retrained student it is a runtime of (its own for a retrained one)."""
        return self.key if self.parent is None else self.parent.origin

    @property
    def route(self) -> str:
        """The compression route: the Pareto plot's marker and the registry's `route` tag."""
        if self.back is not None:
            return f"cascade: {self.parent.route}, then {self.back.route}"
        if self.parent is not None:
            return f"{self.parent.route}, {self.variant}"
        if self.transformer is not None:
            return f"small transformer {TransformerConfig.from_dict(self.transformer).name}"
        rank, kron = self.space.get("embedding_rank"), self.space.get("embedding_kronecker")
        if kron is not None:
            return f"cells, {kron}-term Kronecker table"
        return "cells" if rank is None else f"cells, rank-{rank} table"

    @property
    def arch_json(self) -> str:
        """What it is: the genotype, or the transformer's settings (JSON)."""
        return self.genotype if self.transformer is None else json.dumps(self.transformer, sort_keys=True)

    def cell_flops(self) -> float:
        """The cost model's FLOPs per token of its cells (the table's and head's are alike across
        students); a transformer's count as more than any cell's."""
        if self.transformer is not None:
            return math.inf
        return genotype_params_flops(Genotype.from_json(self.genotype), space=SearchSpaceConfig.from_dict(self.space),
                                     seq_len=1, vocab_size=1, num_labels=1)[1]

    def describe(self) -> str:
        if self.back is not None:
            return f"{self.parent.describe()}, then {self.back.describe()} on {self.defer:.0%}"
        if self.parent is not None:
            return f"{self.parent.describe()}, {self.variant}"
        return self.route if self.outcome is None else f"config {self.outcome.number}"


def student_key(*, genotype: str, space: dict, cache_key: str, retrain: RetrainConfig,
                transformer: dict | None = None) -> str:
    arch = {"genotype": json.loads(genotype), "space": space} if transformer is None else {"transformer": transformer}
    blob = json.dumps({**arch, "cache": cache_key, "retrain": retrain.model_dump(mode="json"), "recipe": RETRAIN_RECIPE},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def screen_config(job: JobConfig) -> RetrainConfig:
    """The retrain that screens candidates. At full fidelity, the job's retrain itself. Short: fewer
    epochs and examples, and no early-exit sweep: a screened student is only ranked by its dev score,
    never served, and the sweep cost 4-11 s of one CPU per student on the demo's task, about a minute of
    its 16 screens."""
    screen = job.outer_loop.screen
    if screen.is_full_retrain:
        return job.retrain
    return job.retrain.model_copy(update={"epochs": screen.epochs, "max_train_examples": screen.max_train_examples,
                                          "exit_max_drop": None})


def screen_dir(job: JobConfig) -> Path:
    """Where screened students live: at full fidelity with the finalists (same keys: they are trained once)."""
    return job.run_dir / ("students" if job.outer_loop.screen.is_full_retrain else "screen")


def screen_specs(job: JobConfig, candidates: list[dict], *, cache_key: str) -> list[StudentSpec]:
    cfg = screen_config(job)
    specs = []
    for c in candidates:
        key = student_key(genotype=c["genotype"], space=c["space"], cache_key=cache_key, retrain=cfg)
        specs.append(StudentSpec(key, c["genotype"], c["space"], cfg, screen_dir(job) / key, figures=c))
    return specs


def finalist_specs(job: JobConfig, outcomes: list[ConfigOutcome], *, cache_key: str) -> list[StudentSpec]:
    """The best `screen.finalists` distinct screened candidates of all configurations, by short score;
    each is owned by the first configuration that screened it."""
    seen: dict[str, tuple[dict, ConfigOutcome]] = {}
    for o in sorted(outcomes, key=lambda o: o.number):
        for c in o.candidates or ({"genotype": o.genotype, "space": o.space, "short_score": o.score},):
            seen.setdefault(candidate_id({**c, "space": c.get("space", o.space)}), (c, o))
    ranked = sorted(seen.values(), key=lambda co: -co[0]["short_score"])[: job.outer_loop.screen.finalists]
    specs = []
    for c, o in ranked:
        space = c.get("space", o.space)
        key = student_key(genotype=c["genotype"], space=space, cache_key=cache_key, retrain=job.retrain)
        specs.append(StudentSpec(key, c["genotype"], space, job.retrain, job.run_dir / "students" / key, o, c))
    return specs


def transformer_specs(job: JobConfig, *, cache_key: str) -> list[StudentSpec]:
    """The job's small-transformer family, each retrained as the finalists are (no search: a member's
    figures are its retrain's)."""
    specs = []
    for arch in job.small_transformers:
        t = arch.to_dict()
        key = student_key(genotype="", space={}, cache_key=cache_key, retrain=job.retrain, transformer=t)
        specs.append(StudentSpec(key, "", {}, job.retrain, job.run_dir / "students" / key, transformer=t))
    return specs


def variant_specs(job: JobConfig, parents: list[StudentSpec]) -> list[StudentSpec]:
    """Each of the job's serving variants of each retrained student, in a folder beside its parent's."""
    return [replace(p, key=f"{p.key}-{v}", out_dir=p.out_dir.with_name(f"{p.key}-{v}"), variant=v, parent=p)
            for p in parents for v in job.variants]


def _made_on_driver(specs: list[StudentSpec], make: Callable[[StudentSpec], dict],
                    on_done: Callable[[StudentSpec, dict, bool], None] | None) -> dict[str, dict]:
    """`make(spec)` for each of `specs` on the driver, one at a time (kept on disk); returns {key: metrics}."""
    results = {}
    for spec in specs:
        hit = (spec.out_dir / METRICS_FILE).is_file()
        results[spec.key] = make(spec)
        if on_done:
            on_done(spec, results[spec.key], hit)
    return results


def make_variants(specs: list[StudentSpec], *, refs: DataRefs,
                  on_done: Callable[[StudentSpec, dict, bool], None] | None = None) -> dict[str, dict]:
    """Export each variant of `specs`; returns {key: metrics}."""
    from workers.variants import make_variant

    return _made_on_driver(specs, lambda spec: make_variant(spec.parent.out_dir, spec.out_dir, variant=spec.variant,
                                                            prepared_dir=refs.prepared_dir), on_done)


def cascade_specs(job: JobConfig, front: StudentSpec, back: StudentSpec) -> list[StudentSpec]:
    """`front` then `back` at each of the job's shares deferred, in folders beside the students'."""
    def short(spec: StudentSpec) -> str:  # a student's key cut to 8 hex digits, its runtime kept: a cell and its
        return spec.key[:8] + spec.key[16:]  # int8 graph are different fronts (d510f000, d510f000-onnx-int8)

    specs = []
    for defer in job.cascade.defer:
        key = f"{short(front)}-{short(back)}-d{round(1000 * defer):03d}"  # d100: 10.0% of search_valid deferred
        specs.append(StudentSpec(key, front.genotype, front.space, front.retrain, front.out_dir.with_name(key),
                                 front.outcome, front.figures, front.transformer, variant=f"cascade-{defer:g}",
                                 parent=front, back=back, defer=defer))
    return specs


def make_cascades(specs: list[StudentSpec], *, refs: DataRefs,
                  on_done: Callable[[StudentSpec, dict, bool], None] | None = None) -> dict[str, dict]:
    """Build each cascade of `specs`; returns {key: metrics}."""
    from workers.cascade_student import make_cascade

    return _made_on_driver(specs, lambda spec: make_cascade(spec.parent.out_dir, spec.back.out_dir, spec.out_dir,
                                                            defer=spec.defer, prepared_dir=refs.prepared_dir), on_done)


def _retrain_remote(spec: dict) -> dict:
    """Runs in a Ray task: load data from the cache and prepared folders, train, save, evaluate."""
    from workers.retrain import retrain_from_paths

    t = spec.get("transformer")
    result = retrain_from_paths(
        arch=Genotype.from_json(spec["genotype"]) if t is None else TransformerConfig.from_dict(t),
        space=SearchSpaceConfig.from_dict(spec["space"]),
        cfg=RetrainConfig(**spec["retrain"]), cache_uri=spec["cache_uri"], prepared_dir=spec["prepared_dir"],
        teacher_dir=spec["teacher_dir"], out_dir=Path(spec["out_dir"]),
    )
    return {"student_dir": str(result.student_dir), "metrics": result.metrics}


@dataclass
class Retrains:
    """Retrains under way: those found on disk, and the Ray tasks training the others."""

    found: list[tuple[StudentSpec, dict]]
    running: dict  # ray.ObjectRef -> StudentSpec

    def wait(self, on_done: Callable[[StudentSpec, dict, bool], None] | None = None) -> dict[str, dict]:
        """Block until every task is done (each reported as it finishes); returns {key: metrics}."""
        results: dict[str, dict] = {}
        for spec, metrics in self.found:
            results[spec.key] = metrics
            if on_done:
                on_done(spec, metrics, True)
        pending = list(self.running)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            spec = self.running[done[0]]
            results[spec.key] = ray.get(done[0])["metrics"]
            if on_done:
                on_done(spec, results[spec.key], False)
        return results


def longest_first(specs: list[StudentSpec]) -> list[StudentSpec]:
    """Ray starts tasks in the order given: longest first, the last to finish is a short one, not a long one
    started last (the cost model's FLOPs ranked the demo's 8 cell retrains, 64-270 CPU-s, with one swap)."""
    return sorted(specs, key=lambda s: -s.cell_flops())


def start_retrains(job: JobConfig, specs: list[StudentSpec], *, refs: DataRefs) -> Retrains:
    """Start a Ray task for each student not on disk yet (one per key) and return at once."""
    found, todo = [], []
    for spec in specs:
        metrics_file = spec.out_dir / METRICS_FILE
        if metrics_file.is_file():
            found.append((spec, json.loads(metrics_file.read_text())))
        elif spec.key not in {s.key for s in todo}:
            todo.append(spec)
    todo = longest_first(todo)
    if todo:  # the job's own Ray (a bench may call this after a pipeline stopped it), never ray's default
        ensure_ray(job.cluster)
    task = ray.remote(_retrain_remote).options(
        num_cpus=job.cluster.cpus_per_trial, num_gpus=job.cluster.gpus_per_trial, max_retries=job.cluster.max_failures,
    )
    running = {
        task.remote({
            "genotype": s.genotype, "space": s.space, "transformer": s.transformer,
            "retrain": s.retrain.model_dump(mode="json"),
            "cache_uri": refs.cache_uri, "prepared_dir": refs.prepared_dir, "teacher_dir": refs.teacher_dir,
            "out_dir": str(s.out_dir.resolve()),
        }): s
        for s in todo
    }
    return Retrains(found, running)


def retrain_students(
    job: JobConfig, specs: list[StudentSpec], *, refs: DataRefs,
    on_done: Callable[[StudentSpec, dict, bool], None] | None = None,
) -> dict[str, dict]:
    """Train the students that are not on disk yet; returns {key: metrics}."""
    return start_retrains(job, specs, refs=refs).wait(on_done)


def screen_candidates(
    job: JobConfig, candidates: list[dict], *, refs: DataRefs, cache_key: str,
    on_done: Callable[[StudentSpec, dict, bool], None] | None = None,
) -> dict[str, float]:
    """Retrain each candidate at the screen's fidelity (Ray tasks, cached on disk); {candidate_id: dev score in the
    task's metric}."""
    specs = screen_specs(job, candidates, cache_key=cache_key)
    metrics = retrain_students(job, specs, refs=refs, on_done=on_done)
    return {candidate_id(s.figures): metrics[s.key]["dev_metric"] for s in specs}
