"""`adaray cache build | info | verify JOB.yaml`: the job's teacher cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator.app import cache_app
from orchestrator.config import JobConfig, load_job
from orchestrator.errors import AdarayError, worker_errors

JOB_FILE = typer.Argument(..., help="The job YAML file.")


@cache_app.command("build")
def build(job_file: Path = JOB_FILE, quiet: bool = typer.Option(False, "--quiet", help="No progress bars.")) -> None:
    """Run the data stages (prepare, teacher, cache); reuse, resume or repair what exists."""
    from orchestrator.stages import data_stages

    job = load_job(job_file)
    with worker_errors():
        _, _, info = data_stages(job, progress=not quiet)
    how = "cache hit" if info.cache_hit else f"built {info.built_shards} shard(s)" + (
        f", {info.repaired_shards} repaired" if info.repaired_shards else "")
    rows = ", ".join(f"{split} {n:,}" for split, n in info.rows.items())
    Console(soft_wrap=True).print(f"cache {info.key} ({how}): {rows} rows\n  at {escape(info.uri)}")


@cache_app.command("info")
def info(job_file: Path = JOB_FILE) -> None:
    """Key, location, rows and size on disk of the job's cache (builds nothing)."""
    from workers.cache import cache_state

    uri = _locate(load_job(job_file))
    state = cache_state(uri)
    console = Console(soft_wrap=True)
    console.print(f"cache {uri.rstrip('/').rsplit('/', 1)[-1]}: {state.state}")
    console.print(f"  location: {escape(uri)}")
    if state.manifest:
        m = state.manifest
        console.print(f"  rows: {', '.join(f'{s} {n:,}' for s, n in m['rows'].items())} "
                      f"({m['augment'].get('copies', 0)} augmented copies per train example)")
        console.print(f"  shards: {len(m['shards'])} · teacher {m['teacher_key']}: {m['num_layers']} layers, "
                      f"{m['num_labels']} labels · hidden states: {'stored' if m['store_hidden'] else 'not stored'}")
    elif state.state == "partial":
        console.print(f"  interrupted build: {state.shards_done} shard(s) done; `adaray cache build` resumes it")
    console.print(f"  size on disk: {_size(state.bytes_on_disk)}")


@cache_app.command("verify")
def verify(job_file: Path = JOB_FILE) -> None:
    """Check every shard's checksum; exit 1 and name the bad shards when any is corrupted or missing."""
    from workers.cache import verify_cache

    uri = _locate(load_job(job_file))
    with worker_errors():
        report = verify_cache(uri)
    console = Console(soft_wrap=True)
    if report.ok:
        console.print(f"cache ok: every shard matches its checksum ({escape(uri)})")
        return
    for name in report.bad_shards:
        console.print(f"[red]corrupted[/] {escape(name)} (checksum differs)")
    for name in report.missing:
        console.print(f"[red]missing[/] {escape(name)}")
    console.print("run `adaray cache build` with this job file to rebuild them")
    raise SystemExit(1)


def _locate(job: JobConfig) -> str:
    """The job's cache URI, from the prepared data and the teacher already computed (writes nothing)."""
    from orchestrator.data import prepared_folder
    from orchestrator.stages import cache_root
    from orchestrator.teacher_source import resolve_teacher_source
    from workers.cache import cache_location
    from workers.dataset import is_prepared
    from workers.teacher import TEACHER_JSON, teacher_location

    source = resolve_teacher_source(job.teacher.model)
    folder = prepared_folder(job.task, tokenizer_source=source, workspace=job.workspace_path)
    if not is_prepared(folder):
        raise AdarayError(f"job {job.name!r} has no prepared data, teacher or cache yet in {job.workspace_path}; "
                          "run `adaray cache build` (or `adaray run`)")
    with worker_errors():
        teacher_dir = teacher_location(source=source, cfg=job.teacher, prepared_dir=folder,
                                       out_root=job.workspace_path / "teachers")
        if not (teacher_dir / TEACHER_JSON).is_file():
            raise AdarayError(f"job {job.name!r} has no teacher yet; run `adaray cache build` (or `adaray teacher`)")
        return cache_location(teacher_dir=teacher_dir, prepared_dir=folder, cfg=job.cache, root_uri=cache_root(job))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
