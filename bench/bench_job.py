"""What the benchmarks share: the job they run on, its --quick slice, its data stages, and the hand cell."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from orchestrator.config import JobConfig, load_job
from orchestrator.stages import data_stages
from search_space.genotype import Genotype
from workers.latency import hardware_name

# The fixed baseline cell of every bench: depth 3, dil_conv_3 on every edge, each node fed by the two before it.
HAND_CELL = Genotype(depth=3, nodes=(
    (("dil_conv_3", 0), ("dil_conv_3", 1)),
    (("dil_conv_3", 1), ("dil_conv_3", 2)),
    (("dil_conv_3", 2), ("dil_conv_3", 3)),
))


# The quick runs' small transformer: the teacher's bottom layer, one epoch (members, a cascade's back)
QUICK_MEMBER = {"layers": 1, "hidden": 384, "heads": 12, "ffn": 1536, "init": "teacher", "epochs": 1}


def quick_job(job: JobConfig) -> JobConfig:
    """A tiny slice, one teacher epoch, no augmentation; both benches use it, so they share a teacher
    and a cache."""
    return job.model_copy(update={
        "name": f"{job.name}-bench-quick",
        "task": job.task.model_copy(update={"max_examples": 320}),
        # min_steps 20, not 200: on 256 rows (8 steps an epoch) 200 steps took 5 of a quick bench's 11 minutes
        "teacher": job.teacher.model_copy(update={"epochs": 1, "max_train_examples": 256, "probe_epochs": 1,
                                                  "min_steps": 20}),
        "cache": job.cache.model_copy(update={"augment": job.cache.augment.model_copy(update={"copies": 0})}),
    })


def bench_job(path: str, *, quick: bool) -> JobConfig:
    """The job at `path`; with `quick`, the shared tiny slice and retrains of a few steps."""
    job = load_job(path)
    if not quick:
        return job
    job = quick_job(job)
    return job.model_copy(update={"retrain": job.retrain.model_copy(update={"epochs": 1, "min_steps": 20})})


def quick_pipeline_job(job: JobConfig) -> JobConfig:
    """The shared quick data slice and one tiny round of the whole job: the path in a couple of minutes."""
    job = quick_job(job)
    return job.model_copy(update={
        # its own registered model: a quick run in a user's workspace never adds versions to theirs
        "tracking": job.tracking.model_copy(update={"model_name": f"{job.name}-student"}),
        "search": job.search.model_copy(update={"epochs": 1, "max_train_examples": 128, "candidates": 4}),
        # min_steps 20, not 300: on 256 rows (4 steps an epoch) 300 steps made every retrain and screen 75 epochs
        "retrain": job.retrain.model_copy(update={"epochs": 1, "max_train_examples": 256, "min_steps": 20,
                                                  "latency_repeats": 5}),
        "small_transformers": [],  # minutes each on a CPU even on the slice: the quick path is the searched one
        # the slice's students may stay at the majority class; the quick path makes no accuracy claim
        "budget": job.budget.model_copy(update={"min_over_majority": -1}),
        "outer_loop": job.outer_loop.model_copy(update={
            "rounds": 1, "configs_per_round": 1, "seeds": 1,
            "screen": job.outer_loop.screen.model_copy(update={"top": 1, "finalists": 1}),
        }),
    })


def job_and_data(path: str, *, quick: bool, slice_job: Callable[[JobConfig], JobConfig] = quick_job) -> tuple:
    """(job, prepared, teacher, cache): the job at `path` (its `slice_job` with `quick`) with its data
    stages run, or found done."""
    job = load_job(path)
    if quick:
        job = slice_job(job)
    return (job, *data_stages(job, progress=not quick))


def print_figures(out: dict, *, started: float) -> None:
    """A bench's last line: its figures as one JSON line of flat keys, with the hardware and the wall
    seconds since `started` (time.perf_counter)."""
    print(json.dumps({**out, "hardware": hardware_name("cpu"), "wall_s": time.perf_counter() - started}), flush=True)
