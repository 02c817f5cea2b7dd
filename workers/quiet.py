"""Loggers held quiet for a block: third-party messages that give the user nothing to act on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_logger(name: str | None = None) -> Iterator[None]:
    """The logger `name` (None: the root logger) at ERROR inside, at its own level again after."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
