"""`adaray tasks` and `adaray data describe`: what data a job trains on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.app import app, data_app
from orchestrator.config import load_job
from orchestrator.tasks import BUILTINS, TaskConfig, load_task
from workers.splits import SPLITS, UNLABELLED, present_splits

if TYPE_CHECKING:  # pandas, torch and transformers are imported by the commands that use them
    import pandas as pd


def _console() -> Console:
    # Piped output is not cut to 80 columns: tables stay one line per row.
    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=160)


def _balance(labels: pd.Series, *, label_names: tuple[str, ...]) -> str:
    shares = labels.value_counts(normalize=True)
    return " · ".join(f"{name} {shares.get(i, 0.0):.1%}" for i, name in enumerate(label_names))


@app.command()
def tasks() -> None:
    """List the built-in tasks with their split sizes and label balance (loads their data)."""
    import pandas as pd

    table = Table(title="built-in tasks (split_seed 0)", box=box.SIMPLE_HEAD)
    for column in ("task", "examples", *SPLITS, "labels", "metric", "data from"):
        table.add_column(column, justify="right" if column == "examples" or column in SPLITS else "left")
    for name, builtin in BUILTINS.items():
        spec, splits = load_task(TaskConfig(builtin=name))
        labels = pd.concat([df["label"] for df in splits.values()])
        table.add_row(name, f"{len(labels):,}", *(f"{len(splits[s]):,}" for s in SPLITS),
                      _balance(labels, label_names=spec.label_names), spec.metric, builtin.pin)
    console = _console()
    console.print(table)
    console.print("Use one in a job file as `task: {builtin: NAME}`. Sizes count unique texts.")


@data_app.command("describe")
def describe(job_file: Path = typer.Argument(..., help="The job YAML file.")) -> None:
    """Split sizes, label balance and teacher token lengths of JOB_FILE's task."""
    from orchestrator.data import length_summary, load_and_fingerprint
    from workers.dataset import is_prepared

    job = load_job(job_file)
    task = job.task
    source, tokenizer, spec, splits, (key, _) = load_and_fingerprint(task, tokenizer_source=job.teacher.model)
    prepared = job.workspace_path / "prepared" / key

    console = _console()
    kind = f"pair ({spec.text_column} + {spec.text_pair_column})" if spec.pair else f"single ({spec.text_column})"
    labels = escape(f"{spec.label_column} [{', '.join(spec.label_names)}]")
    console.print(f"[bold]{escape(spec.name)}[/]: {escape(kind)} -> {labels}, metric {spec.metric}, "
                  f"max_length {task.max_length}")
    console.print(f"teacher tokenizer: {escape(source)}")
    console.print(f"fingerprint {key}: " + ("prepared" if is_prepared(prepared) else "not prepared yet"))
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("split", "examples", "labels", "p50", "p90", "p99", "max", "truncated"):
        table.add_column(column, justify="left" if column in ("split", "labels") else "right")
    for split in present_splits(splits):
        df = splits[split]
        lengths = length_summary(df, tokenizer=tokenizer, max_length=task.max_length, pair=spec.pair)
        balance = ("none (the teacher labels them)" if split == UNLABELLED
                   else _balance(df["label"], label_names=spec.label_names))
        table.add_row(split, f"{len(df):,}", balance, str(lengths.p50), str(lengths.p90), str(lengths.p99),
                      str(lengths.max), f"{lengths.truncated:.1%}")
    console.print(table)
    console.print("Token lengths count [CLS] and [SEP]; truncated: rows cut to fit max_length.")
