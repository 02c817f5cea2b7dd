"""What both benchmarks share: the job they run on, its --quick slice, and its data stages."""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.config import JobConfig, load_job
from orchestrator.stages import data_stages


def quick_job(job: JobConfig) -> JobConfig:
    """A tiny slice, one teacher epoch, no augmentation; both benches use it, so they share a teacher
    and a cache."""
    return job.model_copy(update={
        "name": f"{job.name}-bench-quick",
        "task": job.task.model_copy(update={"max_examples": 320}),
        "teacher": job.teacher.model_copy(update={"epochs": 1, "max_train_examples": 256, "probe_epochs": 1}),
        "cache": job.cache.model_copy(update={"augment": job.cache.augment.model_copy(update={"copies": 0})}),
    })


def job_and_data(path: str, *, quick: bool, slice_job: Callable[[JobConfig], JobConfig] = quick_job) -> tuple:
    """(job, prepared, teacher, cache): the job at `path` (its `slice_job` with `quick`) with its data
    stages run, or found done."""
    job = load_job(path)
    if quick:
        job = slice_job(job)
    return (job, *data_stages(job, progress=not quick))
