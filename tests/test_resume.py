"""Kill the driver after round 1, run `adaray resume`, and check nothing is duplicated."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import optuna
import psutil
import yaml
from tiny_jobs import tiny_job

from orchestrator.config import load_job
from orchestrator.outer_loop import open_study
from orchestrator.tracking import Tracker


def _round_one_told(job) -> bool:
    try:
        trials = open_study(job).trials
    except Exception:  # the study's tables may not exist yet
        return False
    done = [t for t in trials if t.user_attrs.get("round") == 0 and t.state == optuna.trial.TrialState.COMPLETE]
    return len(done) == job.outer_loop.configs_per_round


def test_driver_killed_after_round_one_resumes_without_duplicates(tmp_path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job(tmp_path / "ws", name="resume")))
    job = load_job(job_file)
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(job_file), "--quiet"]
    log = open(tmp_path / "first.log", "w")
    # A session of its own: killing its group takes the driver and the local Ray it started.
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        while not _round_one_told(job):
            assert driver.poll() is None, f"driver exited early:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "round 1 never finished"
            time.sleep(1.0)
    finally:
        _kill_tree(driver)
    # Killed before round 2 was told (its configurations may already be asked: resume reruns those).
    round_two = [t for t in open_study(job).trials if t.user_attrs.get("round") == 1]
    assert not any(t.state == optuna.trial.TrialState.COMPLETE for t in round_two)

    resumed = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", str(job_file), "--quiet"],
                             capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming job resume" in resumed.stdout

    trials = open_study(job).trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    tracker = Tracker(job, task_name="rotten_tomatoes")
    roles = tracker.runs_by_role()
    assert (roles["parent"], roles["config"], roles["trial"]) == (1, 4, 8), roles
    keys = [r.data.tags["adaray.key"] for r in tracker.client.search_runs([tracker.experiment_id], max_results=1000)]
    assert len(keys) == len(set(keys))
    versions = tracker.client.search_model_versions(f"name = '{tracker.model_name}'")
    assert versions and len(versions) == len({v.tags["adaray.key"] for v in versions})
    assert tracker.client.get_model_version_by_alias(tracker.model_name, "champion")


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (its local Ray), as a crash would."""
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
