"""User-facing errors: one line that says what is wrong and how to fix it."""

from collections.abc import Iterator
from contextlib import contextmanager


class AdarayError(Exception):
    """Bad input or state the user can fix. The CLI prints `error: <message>` and exits 2."""


class Interrupted(BaseException):
    """Ctrl-C: raised by the CLI's SIGINT handler (a BaseException, so no `except Exception` on the
    way out swallows it, and not KeyboardInterrupt, which Click turns into a bare "Aborted!")."""


@contextmanager
def worker_errors() -> Iterator[None]:
    """Workers report bad input as ValueError; the user sees it as a one-line error."""
    try:
        yield
    except ValueError as exc:
        raise AdarayError(str(exc)) from exc
