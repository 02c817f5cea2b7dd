"""User-facing errors: one line that says what is wrong and how to fix it."""


class AdarayError(Exception):
    """Bad input or state the user can fix. The CLI prints `error: <message>` and exits 2."""


class Interrupted(BaseException):
    """Ctrl-C: raised by the CLI's SIGINT handler (a BaseException, so no `except Exception` on the
    way out swallows it, and not KeyboardInterrupt, which Click turns into a bare "Aborted!")."""
