"""The driver dies at the moments of round 2 that matter; `adaray resume` finishes the job and duplicates
nothing. Each death is a crash point (orchestrator/faults.py), so each run of the test kills at the same place."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import optuna
import psutil
import pytest
import yaml
from tiny_jobs import tiny_job

from orchestrator.config import load_job
from orchestrator.faults import CRASH_ENV
from orchestrator.outer_loop import open_study
from orchestrator.tracking import Tracker


def _round_one_told(job) -> bool:
    done = [t for t in open_study(job).trials
            if t.user_attrs.get("round") == 0 and t.state == optuna.trial.TrialState.COMPLETE]
    return len(done) == job.outer_loop.configs_per_round


# Where the driver dies in round 2: before Tune starts (its configurations asked), while Tune sets the
# round up, when its first trial starts, and after its trials finish but before Optuna is told. All slow:
# each is two drivers, two local Rays and a tiny job (196 s on the AMD EPYC, where the default run passed 15 min).
POINTS = [
    pytest.param("round-1-tune-setup", marks=pytest.mark.slow),
    pytest.param("round-1-asked", marks=pytest.mark.slow),
    pytest.param("round-1-trial-start", marks=pytest.mark.slow),
    pytest.param("round-1-trials-done", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("point", POINTS)
def test_driver_killed_in_round_two_resumes_without_duplicates(tmp_path, point):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job(tmp_path / "ws", name="resume")))
    job = load_job(job_file)
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(job_file), "--quiet"]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        # A session of its own: its process group holds the driver and the local Ray it started.
        driver = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, CRASH_ENV: point})
        try:
            code = driver.wait(timeout=900)
        finally:
            _kill_group(driver.pid)  # its Ray outlives it, as after a real crash
    assert code == -signal.SIGKILL, f"the driver did not crash at {point}:\n{log.read_text()[-3000:]}"
    assert _round_one_told(job)
    round_two = [t for t in open_study(job).trials if t.user_attrs.get("round") == 1]
    assert round_two and not any(t.state == optuna.trial.TrialState.COMPLETE for t in round_two)

    resumed = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", str(job_file), "--quiet"],
                             capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming job resume" in resumed.stdout

    trials = open_study(job).trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    tracker = Tracker(job, task_name="rotten_tomatoes")
    roles = tracker.runs_by_role()
    assert (roles["parent"], roles["config"], roles["trial"]) == (1, 4, 8), roles
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    keys = [r.data.tags["adaray.key"] for r in runs]
    assert len(keys) == len(set(keys))
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the dead driver's runs were settled
    versions = tracker.client.search_model_versions(f"name = '{tracker.model_name}'")
    assert versions and len(versions) == len({v.tags["adaray.key"] for v in versions})
    assert tracker.client.get_model_version_by_alias(tracker.model_name, "champion")


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the driver's process group (its local Ray)."""
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid:
                proc.kill()
