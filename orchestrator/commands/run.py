"""`adaray run | resume | status | pull | predict | export`: the job and its students."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.app import app
from orchestrator.config import load_job
from orchestrator.errors import AdarayError


@app.command()
def run(job_file: Path = typer.Argument(..., help="The job YAML file."),
        quiet: bool = typer.Option(False, "--quiet", help="No per-trial lines or progress bars.")) -> None:
    """Run the whole flow: prepare, teacher, cache, search, retrain, select, register."""
    from orchestrator.pipeline import run_pipeline

    run_pipeline(load_job(job_file), progress=not quiet)


@app.command()
def resume(job_file: Path = typer.Argument(..., help="The job YAML file of a job whose driver died."),
           quiet: bool = typer.Option(False, "--quiet")) -> None:
    """Pick a job up where its driver stopped: restores the Optuna study and Tune experiments,
    without duplicating MLflow runs or registry versions."""
    from orchestrator.pipeline import StatusFile, run_pipeline

    job = load_job(job_file)
    status = StatusFile(job)
    if "stage" not in status.state:
        raise AdarayError(f"job {job.name!r} has not run yet in {job.workspace_path}; start it with `adaray run`")
    Console().print(f"resuming job [cyan]{job.name}[/] from stage {status.state['stage']}")
    run_pipeline(job, progress=not quiet)


@app.command()
def status(job_file: Path = typer.Argument(..., help="The job YAML file.")) -> None:
    """Show where a job stands: its stage, the outer loop's configurations, the champion."""
    from orchestrator.job_lock import holder_alive, job_lock_path, read_lock
    from orchestrator.outer_loop import study_summary
    from orchestrator.pipeline import StatusFile

    job = load_job(job_file)
    state = StatusFile(job).state
    console = Console()
    if "stage" not in state:
        console.print(f"job {job.name}: not started (workspace {job.workspace_path})")
        return
    console.print(f"job [cyan]{job.name}[/]: stage [bold]{state['stage']}[/], updated {state.get('updated')}")
    if state["stage"] != "done":
        holder = read_lock(job_lock_path(job))
        alive = holder is not None and holder_alive(holder) is not False
        console.print(f"  driver: pid {holder['pid']} on {holder['host']}, running" if alive else
                      f"  [yellow]the driver is gone: run `adaray resume {job_file}`[/]")
    if "round" in state:
        console.print(f"  outer loop round {state['round']}/{state.get('rounds')}")
    configs = study_summary(job)
    if configs:
        table = Table(title=f"Optuna study {job.study_name}")
        names = sorted({name for c in configs for name in c["params"]})  # one column per searched parameter
        for col in ("config", "round", "state", "score", "cost", "agreement", "collapse", *names):
            table.add_column(col)
        for c in configs:
            values = c["values"] or [None, None]
            table.add_row(str(c["number"]), str(c["round"]), c["state"], _fmt(values[0]), _fmt(values[1]),
                          _fmt(c["agreement"]), str(c["collapse"]), *(_fmt(c["params"].get(n), digits=3) for n in names))
        console.print(table)
    if state.get("champion"):
        console.print(f"champion: {state['model']} version {state['champion_version']} (student {state['champion']})")
    if state.get("tracking_uri"):
        uri = state["tracking_uri"]
        missing = uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).is_file()
        console.print(f"tracking: {uri}  parent run {state.get('parent_run_id')}"
                      + ("  [yellow](the tracking store is missing: its runs and registered students are gone)[/]"
                         if missing else ""))


def _fmt(v, *, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


@app.command()
def pull(
    ref: str = typer.Argument(..., help="NAME@ALIAS, NAME/VERSION, NAME (latest) or a models:/ URI."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write the student to."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                     help="MLflow tracking URI (default: the workspace's SQLite store)."),
    workspace: Path = typer.Option(Path(".adaray"), "--workspace", help="Workspace whose MLflow store to use."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder, replacing only the "
                               "student's own files there."),
) -> None:
    """Write a registered student to a folder that `workers.student.load_student` loads.

    The folder must be new or empty unless --force; pull never deletes a file it did not write."""
    from workers.local_files import DestinationError, check_destination

    try:
        check_destination(output, force=force)  # before the store is even opened
    except DestinationError as exc:
        raise AdarayError(str(exc)) from None
    from orchestrator.tracking import pull_student

    uri = _tracking_uri(tracking_uri, workspace)
    try:
        folder = pull_student(ref, dst=output, tracking_uri=uri, force=force)
    except AdarayError:
        raise
    except (LookupError, FileNotFoundError, DestinationError) as exc:
        raise AdarayError(str(exc)) from None
    except Exception as exc:  # MLflow raises its own exception types for unknown names/aliases
        raise AdarayError(f"could not pull {ref!r} from {uri}: {str(exc).splitlines()[0]}") from None
    Console().print(f"[green]✓[/] {ref} → {folder}  (load with workers.student.load_student)")


@app.command()
def predict(
    student: str = typer.Argument(..., help="A student folder, or a registered model (NAME@ALIAS / models:/...)."),
    text: list[str] = typer.Option(None, "--text", help="A text to classify (repeatable)."),
    file: Path = typer.Option(None, "--file", help="A file with one text per line."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI"),
    workspace: Path = typer.Option(Path(".adaray"), "--workspace"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    exit_threshold: float = typer.Option(None, "--exit-threshold", min=0.0, max=1.0,
                                         help="Early exit: stop a text after the first cell this sure of it "
                                         "(0 runs every cell; default: the student's, chosen on dev)."),
) -> None:
    """Classify texts with a student."""
    texts = list(text or [])
    if any(not t.strip() for t in texts):
        raise AdarayError("--text is empty: give the text to classify, e.g. --text \"a fine film\"")
    if file is not None:
        if not file.is_file():
            raise AdarayError(f"--file {file} does not exist")
        texts += [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not texts:
        raise AdarayError("nothing to predict: give --text TEXT (repeatable) or --file FILE")
    with _student_folder(student, tracking_uri=tracking_uri, workspace=workspace) as folder:
        predictions = _predict_folder(folder, texts, exit_threshold=exit_threshold)
    if as_json:
        for t, p in zip(texts, predictions):
            print(json.dumps({"text": t, **p}))
        return
    table = Table()
    table.add_column("text")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for t, p in zip(texts, predictions):
        table.add_row(t, p["label"], f"{p['probabilities'][p['label']]:.3f}")
    Console().print(table)


@app.command()
def export(
    student: str = typer.Argument(..., help="A student folder, or a registered model (NAME@ALIAS / models:/...)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write the exported student to."),
    onnx: bool = typer.Option(False, "--onnx", help="Write an ONNX model (dynamic batch and length) with the "
                              "tokenizer, checked against torch within 1e-4."),
    int8: bool = typer.Option(False, "--int8", help="With --onnx: int8 weights (onnxruntime's dynamic "
                              "quantiser) for the matmuls and the embedding table; export.json says how far "
                              "the logits moved."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export folder."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI"),
    workspace: Path = typer.Option(Path(".adaray"), "--workspace"),
) -> None:
    """Write a student in a format other runtimes serve (today: ONNX, for onnxruntime)."""
    if not onnx:
        raise AdarayError("say which format to export: --onnx (the only one so far)")
    from workers.local_files import DestinationError, check_destination

    try:
        check_destination(output, force=force)  # before the store is opened or anything exported
    except DestinationError as exc:
        raise AdarayError(str(exc)) from None
    try:
        from workers.onnx_export import EXPORT_REPORT, ONNX_FILE, export_onnx
    except ImportError as exc:
        raise AdarayError(f"ONNX export needs the export extra ({exc.name} is missing): "
                          "pip install 'adaray[export]'") from None
    with _student_folder(student, tracking_uri=tracking_uri, workspace=workspace) as folder:
        try:
            written = export_onnx(folder, output, force=force, int8=int8)
        except ValueError as exc:
            raise AdarayError(str(exc)) from None
    moved = json.loads((written / EXPORT_REPORT).read_text()).get("int8_max_logit_diff")
    note = "" if moved is None else f"; int8, logits within {moved:.2g} of torch's"
    Console().print(f"[green]✓[/] {student} → {written / ONNX_FILE}  (inputs ids, mask; output logits{note})")


@contextmanager
def _student_folder(student: str, *, tracking_uri: str | None, workspace: Path) -> Iterator[Path]:
    """The student folder `student` names: a folder as it is, or a registered model pulled into a
    temp folder that is gone on exit. One line for anything that is neither."""
    folder = Path(student)
    registry_ref = student.startswith("models:/") or re.fullmatch(r"[\w.-]+(@[\w.-]+|/\d+)?", student)
    if not registry_ref and not folder.exists():
        raise AdarayError(f"no student folder at {folder}; give a folder written by `adaray pull` or NAME@ALIAS")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise AdarayError(f"{folder} holds no student (no config.json); give a folder written by `adaray pull`")
    if folder.is_dir():
        yield folder
        return
    import tempfile

    from orchestrator.tracking import pull_student

    uri = _tracking_uri(tracking_uri, workspace)
    with tempfile.TemporaryDirectory(prefix="adaray-student-") as tmp:
        try:
            folder = pull_student(student, dst=Path(tmp) / "student", tracking_uri=uri)
        except Exception as exc:
            raise AdarayError(f"{student!r} is neither a student folder nor a registered model in {uri}: "
                              f"{str(exc).splitlines()[0]}") from None
        yield folder


def _predict_folder(folder: Path, texts: list[str], *, exit_threshold: float | None) -> list[dict]:
    from workers.student import StudentPredictor

    try:
        predictor = StudentPredictor.from_pretrained(folder)
    except ValueError as exc:  # a folder with some of a student's files: say which is missing
        raise AdarayError(str(exc)) from None
    return predictor.predict(texts, exit_threshold=exit_threshold)


def _tracking_uri(explicit: str | None, workspace: Path) -> str:
    if explicit:
        return explicit
    db = workspace.expanduser().resolve() / "mlflow" / "mlflow.db"
    if not db.is_file():
        raise AdarayError(f"no MLflow store at {db}; pass --tracking-uri or --workspace")
    return f"sqlite:///{db}"
