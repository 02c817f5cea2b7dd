"""One driver per job: a lock file in the job's run folder that holds the driver's pid and host.

A second driver on the same job refuses in one line that names the first. A lock whose pid is
gone (on this host) is stale: the next driver takes it over and says so. `adaray status` reads
the same file to tell a running job from one whose driver died.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.errors import AdarayError

LOCK_FILE = "driver.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def read_lock(run_dir: Path) -> dict | None:
    """The lock's holder {"pid", "host", "since"}, or None when there is no readable lock."""
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text())
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
def job_lock(run_dir: Path, *, job_name: str, say=print) -> Iterator[dict]:
    """Hold the job's lock inside; AdarayError (one line) when a live driver holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while not _try_create(path, me):
        holder = read_lock(run_dir)
        if holder is None:  # a lock being written this instant, or an unreadable one: look once more
            time.sleep(0.2)
            holder = read_lock(run_dir)
        if holder is not None and holder_alive(holder) is not False:
            where = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
            raise AdarayError(f"job {job_name!r} is already running ({where}); wait for it, or stop it first "
                              f"(its lock is {path})")
        say(f"taking over the lock of a driver that is gone ({(holder or {}).get('pid', '?')}); "
            "the job carries on from what it left")
        path.unlink(missing_ok=True)
    try:
        yield me
    finally:
        if (read_lock(run_dir) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
