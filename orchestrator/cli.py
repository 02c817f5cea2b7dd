"""Entry point of the `adaray` console script."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click
from rich.console import Console

from orchestrator import commands
from orchestrator.app import STATE, app
from orchestrator.errors import AdarayError

for _module in pkgutil.iter_modules(commands.__path__):
    importlib.import_module(f"{commands.__name__}.{_module.name}")


def main(argv: list[str] | None = None) -> int:
    try:
        result = app(args=argv, standalone_mode=False)
        if isinstance(result, int):  # a command's own exit code (e.g. `cache verify` finding damage)
            return result
    except AdarayError as exc:
        if STATE["debug"]:
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.ClickException as exc:  # usage errors
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        Console(stderr=True).print("aborted")
        return 1
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
