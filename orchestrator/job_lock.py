"""Lock files that hold their owner's pid and host: one driver per job, one builder per cache key.

A second driver on the same job refuses in one line that names the first; a second build of the
same cache key waits for the first and then finds it built. A lock whose pid is gone (on this
host) is stale: the next process takes it over and says so. `adaray status` reads the job's lock
to tell a running job from one whose driver died.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.config import JobConfig
from orchestrator.errors import AdarayError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def job_lock_path(job: JobConfig) -> Path:
    """Beside the runs, not in one: a run rejected before it starts leaves no run folder behind."""
    return job.workspace_path / "locks" / f"{job.name}.lock"


def read_lock(path: Path) -> dict | None:
    """The holder {"pid", "host", "since"} of the lock file at `path`, or None when there is no
    readable lock."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def holder_alive(holder: dict) -> bool | None:
    """True/False for a holder on this host; None when it runs on another host (cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return None
    return _alive(int(holder.get("pid", -1)))


def _try_create(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(holder, f)
    return True


@contextmanager
def job_lock(job: JobConfig, *, say=print) -> Iterator[dict]:
    """Hold the job's lock inside; AdarayError (one line) when a live driver holds it."""
    path, job_name = job_lock_path(job), job.name

    def refuse(holder: dict) -> None:
        where = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
        raise AdarayError(f"job {job_name!r} is already running ({where}); wait for it, or stop it first "
                          f"(its lock is {path})")

    with file_lock(path, on_busy=refuse, say=say) as me:
        yield me


@contextmanager
def wait_lock(path: Path, *, what: str, say=print, poll_s: float = 2.0) -> Iterator[dict]:
    """Hold the lock at `path` inside, waiting while a live process holds it (two jobs building one
    cache: one builds, the other waits and then finds it built)."""
    told = set()

    def wait(holder: dict) -> None:
        if holder.get("pid") not in told:
            told.add(holder.get("pid"))
            say(f"waiting for pid {holder.get('pid')} on {holder.get('host')}, which is building {what}")
        time.sleep(poll_s)

    with file_lock(path, on_busy=wait, say=say) as me:
        yield me


@contextmanager
def file_lock(path: Path, *, on_busy, say=print) -> Iterator[dict]:
    """A lock file holding this process's pid and host. While a live holder has it, `on_busy(holder)`
    either raises or returns to try again; a dead holder's lock is taken over with a message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while not _try_create(path, me):
        holder = read_lock(path)
        if holder is None:  # a lock being written this instant, or an unreadable one: look once more
            time.sleep(0.2)
            holder = read_lock(path)
        if holder is not None and holder_alive(holder) is not False:
            on_busy(holder)
            continue
        say(f"taking over the lock of a process that is gone ({(holder or {}).get('pid', '?')}); "
            "carrying on from what it left")
        path.unlink(missing_ok=True)
    try:
        yield me
    finally:
        if (read_lock(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
