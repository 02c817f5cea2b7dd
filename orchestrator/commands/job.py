"""`adaray validate`: resolve and check a job file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.syntax import Syntax

from orchestrator.app import app
from orchestrator.config import dump_job, load_job


@app.command()
def validate(job_file: Path = typer.Argument(..., help="The job YAML file.")) -> None:
    """Validate JOB_FILE and print the resolved config (every default filled in)."""
    from orchestrator.teacher_source import (
        check_max_length,
        check_transformer_inits,
        declared_max_length,
        resolve_teacher_source,
    )

    job = load_job(job_file)
    source = resolve_teacher_source(job.teacher.model)
    check_max_length(job.task.max_length, limit=declared_max_length(source), model=job.teacher.model)
    check_transformer_inits(job.small_transformers, source=source)
    Console().print(Syntax(dump_job(job), "yaml", theme="ansi_dark", background_color="default"))
    Console(stderr=True).print(f"[green]ok[/]: {job_file} is a valid job ({job.name})")
