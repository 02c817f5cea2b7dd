"""`adaray teacher JOB.yaml`: fine-tune (when needed) and probe the job's teacher."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.app import app
from orchestrator.config import load_job
from orchestrator.errors import worker_errors


@app.command()
def teacher(job_file: Path = typer.Argument(..., help="The job YAML file."),
            quiet: bool = typer.Option(False, "--quiet", help="No progress bars.")) -> None:
    """Prepare the data, fine-tune the teacher when it has no head for the task, and probe its layers.

    A second run with the same teacher, data and settings reuses the saved teacher.
    """
    from orchestrator.plots import PROBES_PLOT
    from orchestrator.stages import prepare_stage, teacher_stage
    from workers.metrics import METRIC_NAMES
    from workers.probes import layer_names

    job = load_job(job_file)
    prepared = prepare_stage(job, progress=not quiet)
    with worker_errors():
        artifacts = teacher_stage(job, prepared, progress=not quiet)
    how = "cache hit" if artifacts.cache_hit else "fine-tuned" if artifacts.fine_tuned else "trained head reused"
    console = Console()
    console.print(f"teacher {artifacts.key} ({how}): dev {METRIC_NAMES[artifacts.metric]} "
                  f"[bold]{artifacts.dev_score:.4f}[/]")
    name = METRIC_NAMES[artifacts.metric]
    table = Table(title=f"teacher probes (dev {name})")
    table.add_column("layer")
    table.add_column(name, justify="right")
    for layer, score in zip(layer_names(len(artifacts.probe_scores)), artifacts.probe_scores, strict=True):
        table.add_row(layer, f"{score:.4f}")
    table.add_row("teacher (head)", f"{artifacts.dev_score:.4f}", style="bold")
    console.print(table)
    console.print(f"plot: {escape(str(artifacts.dir / PROBES_PLOT))}", soft_wrap=True)
