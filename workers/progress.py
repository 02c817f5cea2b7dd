"""Progress lines of the worker stages (teacher, cache): stderr, so a command's own output stays clean."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
