"""The data-side stages of a job: prepare → teacher → cache.

Each stage is keyed by its inputs and is a cache hit when its output already exists. The CLI's
single-stage commands (`adaray teacher`, `adaray cache ...`, `adaray search`) and the full
pipeline call these same functions, so a stage computed by one is reused by the other.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cluster.connect import ensure_ray
from orchestrator.config import JobConfig
from orchestrator.data import PreparedData, prepare
from orchestrator.job_lock import wait_lock
from orchestrator.teacher_source import resolve_teacher_source
from workers.cache import CacheInfo, build_cache, cache_key
from workers.teacher import TeacherArtifacts, prepare_teacher


def prepare_stage(job: JobConfig, *, progress: bool = True) -> PreparedData:
    return prepare(
        job.task, tokenizer_source=resolve_teacher_source(job.teacher.model), workspace=job.workspace_path,
        progress=progress,
    )


def teacher_stage(job: JobConfig, prepared: PreparedData, *, progress: bool = True) -> TeacherArtifacts:
    from orchestrator.plots import probe_plot  # matplotlib: only stages that draw import it

    teacher = prepare_teacher(
        source=resolve_teacher_source(job.teacher.model), cfg=job.teacher, prepared_dir=prepared.folder,
        out_root=job.workspace_path / "teachers", progress=progress,
    )
    probe_plot(teacher.dir)
    return teacher


def cache_root(job: JobConfig) -> str:
    return job.cache.uri or str((job.workspace_path / "cache").resolve())


def cache_stage(
    job: JobConfig, prepared: PreparedData, teacher: TeacherArtifacts, *, progress: bool = True
) -> CacheInfo:
    ensure_ray(job.cluster)
    root = cache_root(job)
    build = partial(build_cache, teacher_dir=teacher.dir, prepared_dir=prepared.folder, cfg=job.cache, root_uri=root,
                    progress=progress)
    if "://" in root and not root.startswith("file://"):
        return build()  # object storage: no local lock to take; concurrent builds publish the same bytes
    key, _ = cache_key(teacher_dir=teacher.dir, meta=prepared.meta, cfg=job.cache)
    folder = Path(root.removeprefix("file://"))
    with wait_lock(folder / f".{key}.lock", what=f"the teacher cache {key}"):
        return build()


def data_stages(job: JobConfig, *, progress: bool = True) -> tuple[PreparedData, TeacherArtifacts, CacheInfo]:
    """prepare → teacher → cache, each a cache hit when already done."""
    prepared = prepare_stage(job, progress=progress)
    teacher = teacher_stage(job, prepared, progress=progress)
    return prepared, teacher, cache_stage(job, prepared, teacher, progress=progress)

