"""Entry point of the `adaray` console script."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from rich.console import Console

from orchestrator import commands
from orchestrator.app import STATE, app
from orchestrator.errors import AdarayError

for _module in pkgutil.iter_modules(commands.__path__):
    importlib.import_module(f"{commands.__name__}.{_module.name}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Typer reports usage errors itself (standalone mode);
    an AdarayError becomes one `error:` line and exit code 2 (a traceback only with --debug)."""
    try:
        app(args=argv, prog_name="adaray")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except AdarayError as exc:
        if STATE["debug"]:
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
