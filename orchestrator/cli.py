"""Entry point of the `adaray` console script."""

from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
import threading

from rich.console import Console

from orchestrator import commands
from orchestrator.app import app
from orchestrator.errors import AdarayError, Interrupted

for _module in pkgutil.iter_modules(commands.__path__):
    importlib.import_module(f"{commands.__name__}.{_module.name}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Typer reports usage errors itself (standalone mode);
    an AdarayError becomes one `error:` line and exit code 2 (a traceback only with --debug)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
    settings = {"debug": False}  # filled by the root callback (--debug)
    try:
        app(args=argv, prog_name="adaray", obj=settings)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except AdarayError as exc:
        if settings["debug"]:
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except OSError as exc:  # disk full, read-only or unwritable folders, a file where a folder belongs
        if settings["debug"]:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        Console(stderr=True).print(f"[bold red]error:[/] {exc.strerror or exc}{where}; free the space or fix the "
                                   "path, then carry on with `adaray resume JOB.yaml` (what finished is kept; "
                                   "--debug shows the traceback)", highlight=False, soft_wrap=True)
        return 1
    except BaseException as exc:
        # Raised inside a C extension's call (Ray's wait), our Interrupted arrives wrapped in a SystemError.
        if settings["debug"] or not _caused_by_interrupt(exc):
            raise
        Console(stderr=True).print("[bold yellow]interrupted[/]: stopped before the next step; what finished is "
                                   "kept, nothing half-done was registered. Carry on with `adaray resume JOB.yaml`.",
                                   highlight=False, soft_wrap=True)
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    return 0


def _interrupt(signum, frame) -> None:
    raise Interrupted()


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Interrupted):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
