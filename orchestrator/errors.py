"""User-facing errors: one line that says what is wrong and how to fix it."""

import signal
import threading
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


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """A first Ctrl-C inside is held until the block ends, then stops the job (a registration is all
    or nothing); a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.getsignal(signal.SIGINT)

    def hold(signum, frame) -> None:
        if held and callable(previous):
            previous(signum, frame)
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise Interrupted("interrupted during registration, which finished first")
