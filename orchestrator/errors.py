"""User-facing errors: one line that says what is wrong and how to fix it."""


class AdarayError(Exception):
    """Bad input or state the user can fix. The CLI prints `error: <message>` and exits 2."""
