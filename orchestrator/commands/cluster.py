"""`adaray submit`: run a job on a Ray cluster through its job submission API."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer
from rich.console import Console

from orchestrator.app import app
from orchestrator.config import JobConfig, dump_job, load_job
from orchestrator.errors import AdarayError


@app.command()
def submit(
    job_file: Path = typer.Argument(..., help="The job YAML file."),
    address: str = typer.Option(
        ..., "--address", envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],
        help="The Ray dashboard's HTTP address, like http://HEAD:8265.",
    ),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Stream the job's logs until it ends."),
    pip: list[str] = typer.Option(None, "--pip", help="A pip requirement to install for the job (repeatable)."),
    command: str = typer.Option("run", "--command", help="The adaray command the cluster runs on the job file."),
) -> None:
    """Upload this project and run `adaray COMMAND JOB_FILE` on the Ray cluster at ADDRESS.

    Token-authenticated clusters (`ray start --head` makes one) need RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN.
    """
    from cluster.submit import SubmitError, dashboard_url, submit_job  # ray and aiohttp: only here

    job = load_job(job_file)  # a bad job fails here, before the cluster is contacted
    root = project_root(job_file)
    try:
        address = dashboard_url(address)
    except SubmitError as exc:
        raise AdarayError(str(exc)) from None
    out = Console(highlight=False, soft_wrap=True)  # commands stay copyable: no wrapping
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for warning in _warnings(job, root=root):
        err.print(f"[yellow]warning:[/] {warning}")

    def announce(job_id: str) -> None:
        out.print(f"submitted job {job_id} to {address}")
        out.print(f"  logs:   ray job logs {job_id} --address {address} --follow")
        out.print(f"  status: ray job status {job_id} --address {address}")
        out.print(f"  stop:   ray job stop {job_id} --address {address}")

    with tempfile.TemporaryDirectory(prefix="adaray-submit-") as tmp:
        sent = job_file.resolve()
        if not sent.is_relative_to(root):
            # Outside the upload its relative paths would mean nothing there: send it resolved.
            sent = Path(tmp) / job_file.name
            sent.write_text(dump_job(job))
        try:
            result = submit_job(
                address=address, job_file=sent, working_dir=root, extra_pip=pip or None, follow=follow,
                entrypoint=f"python -m orchestrator.cli {command}", on_submitted=announce,
            )
        except SubmitError as exc:
            raise AdarayError(str(exc)) from None
    if result.status == "SUCCEEDED":
        err.print(f"[green]job {result.job_id} succeeded[/]")
    else:
        err.print(f"job {result.job_id} is {result.status.lower()}")


def project_root(job_file: Path) -> Path:
    """The folder holding pyproject.toml above the job file, else above the current directory."""
    for start in (job_file.resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "pyproject.toml").is_file():
                return folder
    raise AdarayError(
        f"no project folder (one holding pyproject.toml) above {job_file} or the current directory; "
        "run `adaray submit` from the adaray project, which is what the cluster receives"
    )


def _warnings(job: JobConfig, *, root: Path) -> list[str]:
    warnings = []
    local = [("task.path", job.task.path), *((f"task.files.{k}", v) for k, v in (job.task.files or {}).items()),
             ("task.unlabelled", job.task.unlabelled)]
    if Path(job.teacher.model).is_absolute():
        local.append(("teacher.model", job.teacher.model))
    for key, value in local:
        if value and "://" not in value and not Path(value).is_relative_to(root):
            warnings.append(f"{key} {value} lies outside {root}, which is all the cluster receives: "
                            "its nodes must see it at that same path")
    if job.cluster.address not in (None, "auto"):
        warnings.append(f"cluster.address is {job.cluster.address!r}: on the cluster the job connects there, "
                        "not to the cluster it runs on; leave it out (or 'auto') to use that one")
    if job.tracking.uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        warnings.append("no tracking server (tracking.uri or MLFLOW_TRACKING_URI): the results stay in the "
                        "job's working folder on the cluster, which Ray deletes when it needs room")
    return warnings
