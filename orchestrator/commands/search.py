"""`adaray search` (one local search, then retrain) and `adaray latency-table` (per-op latency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from orchestrator.app import app
from orchestrator.config import JobConfig, load_job
from orchestrator.errors import AdarayError
from workers.config import SearchConfig

if TYPE_CHECKING:  # torch and the workers are imported by the commands that use them: a fast --help
    from search_space.genotype import Genotype

SEARCH_FILE = "search.json"


@app.command()
def search(
    job_file: Path = typer.Argument(..., help="The job YAML file."),
    beta: float | None = typer.Option(None, "--beta", min=0, help="Efficiency-loss weight (default: the job's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the search (weights, data halves, Gumbel noise)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """One AdaBERT search on this machine (no Tune), then retrain and evaluate the derived student.

    Runs the data stages first (cache hits when done). The search checkpoints every epoch and a
    re-run resumes it; the student lands in <workspace>/runs/<job>/search-beta<B>-seed<S>/student.
    """
    import torch

    from orchestrator.stages import data_stages
    from search_space.genotype import Genotype
    from workers.local_files import write_file_atomic, write_json_atomic
    from workers.retrain import retrain_from_paths
    from workers.search import run_search
    from workers.search_data import check_search_data, load_search_data
    from workers.search_state import STATE_FILE

    job = load_job(job_file)
    cfg = _search_config(job, beta=beta, seed=seed)
    console = Console()
    prepared, teacher, cache = data_stages(job, progress=not quiet)
    run_dir = job.run_dir / f"search-beta{cfg.beta:g}-seed{cfg.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # the worker's input checks, as one-line errors before any training
        data = load_search_data(cache_uri=cache.uri, prepared_dir=str(prepared.folder), teacher_dir=str(teacher.dir),
                                max_train_examples=cfg.max_train_examples)
        check_search_data(data)
    except ValueError as exc:
        raise AdarayError(f"search: {exc}") from None

    key = {"search": cfg.model_dump(mode="json"), "space": job.space.to_dict(), "cache": cache.key}
    found = _read_json(run_dir / SEARCH_FILE)
    if found is not None and found.get("key") == key:
        console.print(f"search: found in {run_dir / SEARCH_FILE}")
        genotype, search_metrics = Genotype.from_dict(found["genotype"]), found["metrics"]
    else:
        state_path = run_dir / STATE_FILE
        resume = _resume_state(state_path, key=key)
        if resume is not None:
            console.print(f"search: resuming after epoch {resume['epoch']} from {state_path}")

        def save_state(metrics: dict, state: dict) -> None:  # every epoch: a crash loses one epoch at most
            write_file_atomic(state_path, lambda f: torch.save({**state, "key": key}, f))

        result = run_search(space=job.space, cfg=cfg, data=data, report=save_state, resume=resume, progress=not quiet)
        genotype, search_metrics = result.genotype, result.metrics
        write_json_atomic(run_dir / SEARCH_FILE, {"key": key, "genotype": genotype.to_dict(), "metrics": result.metrics,
                                           "history": result.history})
        state_path.unlink(missing_ok=True)

    retrained = retrain_from_paths(arch=genotype, space=job.space, cfg=job.retrain, cache_uri=cache.uri,
                                   prepared_dir=prepared.folder, teacher_dir=teacher.dir, out_dir=run_dir / "student",
                                   progress=not quiet)
    from orchestrator.measure import student_latency

    timing = student_latency(retrained.student_dir, seq_len=prepared.meta.max_length, repeats=job.retrain.latency_repeats)
    console.print(genotype_table(genotype))
    console.print(_metrics_table(search_metrics, {**retrained.metrics, **timing}, teacher=teacher))
    console.print(f"student saved in {retrained.student_dir}")


@app.command("latency-table")
def latency_table(
    job_file: Path = typer.Argument(..., help="The job YAML file (its search space is measured)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the JSON table."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    seq_len: int | None = typer.Option(None, "--seq-len", min=1, help="Default: the task's max_length."),
    repeats: int = typer.Option(30, "--repeats", min=1),
) -> None:
    """Measure every candidate op's latency on this device; `search.cost_source: latency` reads the table."""
    import torch

    from workers.latency import hardware_name, op_latency_table, write_latency_table

    job = load_job(job_file)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise AdarayError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise AdarayError("--device cuda: no CUDA device is visible here")
    seq_len = seq_len or job.task.max_length  # the length every model is timed at
    table = op_latency_table(job.space, seq_len=seq_len, batch_size=batch_size, device=device, repeats=repeats)
    hardware = hardware_name(device)
    write_latency_table(output, latency_ms=table, hardware=hardware, embed_dim=job.space.embed_dim, seq_len=seq_len,
                        batch_size=batch_size)
    view = Table(title=f"op latency, batch {batch_size} x {seq_len} tokens x width {job.space.embed_dim} on {hardware}")
    view.add_column("op")
    view.add_column("median ms", justify="right")
    for name, ms in sorted(table.items(), key=lambda kv: kv[1]):
        view.add_row(name, f"{ms:.4f}")
    console = Console()
    console.print(view)
    console.print(f"wrote {output}; use it with search: {{cost_source: latency, latency_table: {output}}}")


def _search_config(job: JobConfig, *, beta: float | None, seed: int) -> SearchConfig:
    """The job's search config with the command line's beta and seed; checks a latency table early."""
    update = {"seed": seed} | ({} if beta is None else {"beta": beta})
    try:
        cfg = SearchConfig.model_validate({**job.search.model_dump(), **update})
    except ValidationError as exc:
        raise AdarayError(f"search: {exc.errors()[0]['msg']}") from None
    if cfg.cost_source == "latency":
        from workers.latency import read_latency_table

        if cfg.latency_table is None:
            raise AdarayError("search.cost_source is latency but search.latency_table is not set "
                              "(make one with `adaray latency-table JOB.yaml -o FILE`)")
        try:
            read_latency_table(cfg.latency_table, primitives=job.space.primitives, embed_dim=job.space.embed_dim)
        except ValueError as exc:
            raise AdarayError(str(exc)) from None
    return cfg


def _resume_state(path: Path, *, key: dict) -> dict | None:
    """The checkpoint of an interrupted search with the same key, else None (and a stale one is removed)."""
    if not path.is_file():
        return None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.pop("key", None) != key:
        path.unlink()
        return None
    return state


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def genotype_table(genotype: Genotype) -> Table:
    """One row per intermediate node: its two kept (op, input) edges. Inputs 0, 1 are cells k-2, k-1."""
    table = Table(title=f"genotype: {genotype.depth} cell(s)")
    for column in ("node", "edge 1", "edge 2"):
        table.add_column(column)
    names = ["cell k-2", "cell k-1"] + [f"node {j}" for j in range(genotype.num_nodes)]
    for j, node in enumerate(genotype.nodes):
        table.add_row(f"node {j}", *(f"{op} ← {names[i]}" for op, i in node))
    return table


def _metrics_table(search: dict, student: dict, *, teacher) -> Table:
    """Every score in the task's metric, named; accuracy and macro-F1 both for the student."""
    from workers.metrics import METRIC_NAMES

    metric = METRIC_NAMES[search["metric"]]
    table = Table(title="search and retrained student")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        (f"search-valid {metric} (supernet weights)", f"{search.get('best_candidate_score', search['search_valid_score']):.4f}"),
        ("collapse", search["collapse_reason"] or "no"),
        (f"teacher dev {metric}", f"{teacher.score_in(search['metric']):.4f}"),
        ("student dev accuracy", f"{student['dev_acc']:.4f}"),
        ("student dev macro-F1", f"{student['dev_f1_macro']:.4f}"),
        ("student test accuracy", f"{student['test_acc']:.4f}"),
        ("student test macro-F1", f"{student['test_f1_macro']:.4f}"),
        ("params", f"{student['params']:,}"),
        ("FLOPs per example", f"{student['flops']:,.0f}"),
    ]
    for batch in (1, 128):
        if f"latency_b{batch}_ms" in student:
            rows.append((f"latency b{batch} median / p95 (ms)",
                         f"{student[f'latency_b{batch}_ms']:.3f} / {student[f'latency_b{batch}_p95_ms']:.3f}"))
    rows.append(("hardware", student.get("hardware", "-")))
    for name, value in rows:
        table.add_row(name, value)
    return table
