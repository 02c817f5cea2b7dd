"""Crash points for fault tests: the driver kills itself where ADARAY_CRASH_AT names the point, so a
test reaches each moment that matters (before, during and after a round's set-up) every time,
instead of whenever its polling notices. Unset (always, outside tests), every point is a no-op."""

from __future__ import annotations

import os
import signal

from ray import tune

CRASH_ENV = "ADARAY_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process, as a crash or an OOM kill would, when ADARAY_CRASH_AT is `name`."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class TuneCrashPoints(tune.Callback):
    """Crash points inside a round's Tune experiment: `<prefix>-tune-setup` once the experiment is set
    up, `<prefix>-trial-start` when its first trial starts."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def setup(self, **info) -> None:
        crash_point(f"{self.prefix}-tune-setup")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        crash_point(f"{self.prefix}-trial-start")
