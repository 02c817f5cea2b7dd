"""Submitting a job file to a Ray cluster through Ray's job submission API (the dashboard's HTTP address)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from cluster.connect import check_reachable

DEFAULT_ENTRYPOINT = "python -m orchestrator.cli run"

# Never uploaded with the project: local state, results and caches (Ray also honours .gitignore).
EXCLUDES = [
    ".adaray/", ".git/", "mlruns/", "mlartifacts/", "__pycache__/", "*.pyc", ".pytest_cache/", ".ruff_cache/",
    ".venv/", "venv/", "build/", "*.egg-info/", ".install.stamp",
]

# Passed on from the submitting shell when set: tracking server and object-store credentials.
PASSED_ENV = re.compile(
    r"MLFLOW_TRACKING_(URI|USERNAME|PASSWORD|TOKEN|INSECURE_TLS)|MLFLOW_S3_ENDPOINT_URL|MLFLOW_REGISTRY_URI"
    r"|AWS_[A-Z0-9_]+|HF_TOKEN|HF_ENDPOINT"
)

# A job file outside the uploaded folder travels in this variable; the entrypoint writes it to a file.
JOB_TEXT_VAR = "ADARAY_SUBMITTED_JOB"


class SubmitError(Exception):
    """A one-line reason a submission failed (the CLI turns it into `error: ...`)."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    status: str  # a ray.job_submission.JobStatus value: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED


def submit_job(
    *,
    address: str,
    job_file: Path,
    working_dir: Path,
    extra_pip: list[str] | None = None,
    env: dict[str, str] | None = None,
    follow: bool = True,
    wait: bool = False,
    timeout_s: float | None = None,
    entrypoint: str | None = None,
    on_submitted: Callable[[str], None] | None = None,
) -> SubmitResult:
    """Upload `working_dir` and run `<entrypoint> <job file>` on the cluster at `address`.

    entrypoint: the command the job file's path is appended to (default `python -m orchestrator.cli run`).
    A job file inside `working_dir` is run from the upload; one outside it travels as text.
    follow: stream the job's logs to stdout until it ends; wait: wait for the end without logs.
    Either way, give up waiting after `timeout_s` (the job runs on) and return the status then.
    on_submitted(job_id) runs as soon as the cluster accepted the job.
    Raises SubmitError when the cluster is unreachable or refuses the job, or when the job fails.
    """
    job_file, working_dir = Path(job_file).resolve(), Path(working_dir).resolve()
    if not job_file.is_file():
        raise SubmitError(f"job file not found: {job_file}")
    if not working_dir.is_dir():
        raise SubmitError(f"working directory not found: {working_dir}")
    url = dashboard_url(address)
    _check_dashboard(url)
    runtime_env: dict = {
        "working_dir": str(working_dir),
        "excludes": EXCLUDES,
        "env_vars": {k: v for k, v in os.environ.items() if PASSED_ENV.fullmatch(k)} | (env or {}),
    }
    if extra_pip:
        runtime_env["pip"] = list(extra_pip)
    command = entrypoint or DEFAULT_ENTRYPOINT
    if job_file.is_relative_to(working_dir):
        command = f"{command} {shlex.quote(job_file.relative_to(working_dir).as_posix())}"
    else:
        runtime_env["env_vars"][JOB_TEXT_VAR] = job_file.read_text()
        command = (f'job=$(mktemp --suffix=.yaml) && trap \'rm -f "$job"\' EXIT && '
                   f'printf "%s" "${JOB_TEXT_VAR}" > "$job" && {command} "$job"')

    client = _client(url)
    with _ray_logs_at(logging.WARNING):  # not every file Ray packs or skips, nor each socket it closes
        try:
            job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env)
        except (AuthenticationError, RuntimeError, ValueError, OSError) as exc:
            raise SubmitError(f"the cluster at {url} refused the job: {_first_line(exc)}") from None
        if on_submitted is not None:
            on_submitted(job_id)
        try:
            return _outcome(client, job_id, follow=follow, wait=wait, timeout_s=timeout_s)
        except (RuntimeError, OSError) as exc:
            raise SubmitError(f"lost contact with the cluster at {url} about job {job_id}: {_first_line(exc)}",
                              job_id=job_id) from None


def _outcome(client: JobSubmissionClient, job_id: str, *, follow: bool, wait: bool,
             timeout_s: float | None) -> SubmitResult:
    if not (follow or wait):
        return SubmitResult(job_id, str(client.get_job_status(job_id).value))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if follow:
        _stream_logs(client, job_id, deadline=deadline)
    status = _wait_for_end(client, job_id, deadline=deadline)
    if status in (JobStatus.FAILED, JobStatus.STOPPED):
        # Ray's message repeats the logs after its first sentence; the last lines say more.
        message = (client.get_job_info(job_id).message or "").strip()
        reason = message.split("\n", 1)[0].split(", last available logs")[0]
        lines = [line.strip() for line in client.get_job_logs(job_id).splitlines()]
        tail = [line for line in lines if line and not line.startswith("Running entrypoint for job")][-3:]
        raise SubmitError(
            f"job {job_id} {status.value.lower()}" + (f": {reason}" if reason else "")
            + (f"; last log lines: {' | '.join(tail)}" if tail else ""), job_id=job_id,
        )
    return SubmitResult(job_id, str(status.value))


def dashboard_url(address: str) -> str:
    """The dashboard's http(s)://HOST:PORT; a bare HOST:PORT means http."""
    url = (address if "://" in address else f"http://{address}").rstrip("/")
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # a port that is not a number
        ok = False
    if not ok:
        raise SubmitError(f"the address must be the Ray dashboard's HTTP address, like http://HEAD:8265; got {address!r}")
    return url


def _check_dashboard(url: str) -> None:
    parts = urlsplit(url)
    try:
        check_reachable(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except ConnectionError as exc:
        raise SubmitError(f"{exc} (is {url} the dashboard's address?)") from None


def _client(url: str) -> JobSubmissionClient:
    try:
        with _env_hidden("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # Ray lets them override `url`
            return JobSubmissionClient(url)
    except AuthenticationError as exc:
        raise SubmitError(
            f"token authentication with the Ray cluster at {url} failed ({_first_line(exc)}): set "
            "RAY_AUTH_MODE=token and give the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
            "RAY_AUTH_TOKEN"
        ) from None
    except (ConnectionError, RuntimeError) as exc:
        raise SubmitError(f"cannot use the job submission API at {url}: {_first_line(exc)}") from None


@contextlib.contextmanager
def _ray_logs_at(level: int) -> Iterator[None]:
    # The job SDK's loggers set their own level, so "ray" alone does not quiet them.
    loggers = [logging.getLogger(name) for name in
               ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, saved):
            lg.setLevel(old)


@contextlib.contextmanager
def _env_hidden(*names: str) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _stream_logs(client: JobSubmissionClient, job_id: str, *, deadline: float | None) -> None:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        asyncio.run(asyncio.wait_for(tail(), timeout))
    except (TimeoutError, asyncio.TimeoutError):
        return
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:  # the status poll still tells the outcome
        sys.stderr.write(f"log stream of {job_id} interrupted: {_first_line(exc)}\n")


def _wait_for_end(client: JobSubmissionClient, job_id: str, *, deadline: float | None) -> JobStatus:
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or (deadline is not None and time.monotonic() >= deadline):
            return status
        time.sleep(1.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
