"""Retrain each derived genotype as a plain student (Ray tasks), then measure latency on the driver.

Students train in parallel; their latency is measured afterwards, one at a time, so no
measurement shares the CPU with another student's training. Each student's folder is keyed by
(genotype, space, cache key, retrain config): a re-run finds it and skips the training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray

from orchestrator.config import JobConfig
from orchestrator.outer_loop import ConfigOutcome, DataRefs


@dataclass(frozen=True)
class StudentSpec:
    key: str
    outcome: ConfigOutcome
    out_dir: Path


def student_key(outcome: ConfigOutcome, *, job: JobConfig, cache_key: str) -> str:
    blob = json.dumps({"genotype": json.loads(outcome.genotype), "space": outcome.space, "cache": cache_key,
                       "retrain": job.retrain.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def student_specs(job: JobConfig, outcomes: list[ConfigOutcome], *, cache_key: str) -> list[StudentSpec]:
    """One student per distinct (genotype, space); the first configuration that derived it owns it."""
    specs: dict[str, StudentSpec] = {}
    for o in sorted(outcomes, key=lambda o: o.number):
        key = student_key(o, job=job, cache_key=cache_key)
        specs.setdefault(key, StudentSpec(key, o, job.run_dir / "students" / key))
    return list(specs.values())


def _retrain_remote(spec: dict) -> dict:
    """Runs in a Ray task: load data from the cache and prepared folders, train, save, evaluate."""
    from search_space.config import SearchSpaceConfig
    from search_space.genotype import Genotype
    from workers.cache import open_cache
    from workers.config import RetrainConfig
    from workers.dataset import load_split, read_meta
    from workers.retrain import retrain
    from workers.teacher import teacher_word_embeddings

    cache = open_cache(spec["cache_uri"])
    cfg = RetrainConfig(**spec["retrain"])
    space = spec["space"]
    result = retrain(
        genotype=Genotype.from_json(spec["genotype"]),
        space=SearchSpaceConfig.from_dict({**space, "primitives": tuple(space["primitives"])}),
        cfg=cfg, train=cache.split("train"), dev=load_split(spec["prepared_dir"], "dev"),
        test=load_split(spec["prepared_dir"], "test"), meta=read_meta(spec["prepared_dir"]),
        num_teacher_layers=int(cache.manifest["num_layers"]),
        embedding_init=teacher_word_embeddings(spec["teacher_dir"]), tokenizer_dir=spec["teacher_dir"],
        out_dir=Path(spec["out_dir"]), measure_latency=False,
    )
    return {"student_dir": str(result.student_dir), "metrics": result.metrics}


def retrain_students(
    job: JobConfig, specs: list[StudentSpec], *, refs: DataRefs,
    on_done: Callable[[StudentSpec, dict, bool], None] | None = None,
) -> dict[str, dict]:
    """Train the students that are not on disk yet; returns {key: metrics}."""
    results: dict[str, dict] = {}
    todo = []
    for spec in specs:
        metrics_file = spec.out_dir / "metrics.json"
        if metrics_file.is_file():
            results[spec.key] = json.loads(metrics_file.read_text())
            if on_done:
                on_done(spec, results[spec.key], True)
        else:
            todo.append(spec)
    task = ray.remote(_retrain_remote).options(
        num_cpus=job.cluster.cpus_per_trial, num_gpus=job.cluster.gpus_per_trial, max_retries=job.cluster.max_failures,
    )
    refs_by_obj = {
        task.remote({
            "genotype": s.outcome.genotype, "space": s.outcome.space, "retrain": job.retrain.model_dump(mode="json"),
            "cache_uri": refs.cache_uri, "prepared_dir": refs.prepared_dir, "teacher_dir": refs.teacher_dir,
            "out_dir": str(s.out_dir.resolve()),
        }): s
        for s in todo
    }
    pending = list(refs_by_obj)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        spec = refs_by_obj[done[0]]
        out = ray.get(done[0])
        results[spec.key] = out["metrics"]
        if on_done:
            on_done(spec, out["metrics"], False)
    return results
