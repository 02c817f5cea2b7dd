"""Ctrl-C: a real driver gets a real SIGINT during the search, then during retrain; each time it stops
in one line with exit 130, registers nothing, and `adaray resume` carries on to a champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from tiny_jobs import tiny_job

from orchestrator.config import load_job
from orchestrator.tracking import Tracker


def _stage(job) -> str | None:
    try:
        return json.loads((job.run_dir / "status.json").read_text()).get("stage")
    except (OSError, ValueError):
        return None


def _interrupt_at(job_file, job, *, stage: str, command: str, tmp_path) -> subprocess.CompletedProcess:
    """Start `adaray COMMAND`, press Ctrl-C (SIGINT to its process group, as a terminal does) once the
    job reaches `stage`; the driver's exit."""
    log = tmp_path / f"{command}-{stage}.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", command, str(job_file), "--quiet"],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 900
        while _stage(job) != stage:
            assert driver.poll() is None, f"driver exited before {stage}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never reached {stage}"
            time.sleep(0.5)
        time.sleep(3)  # inside the stage's work (Tune trials or retrain tasks running)
        os.killpg(driver.pid, signal.SIGINT)
        try:
            code = driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(driver.args, code, log.read_text(), "")


@pytest.mark.slow
def test_ctrl_c_at_search_and_at_retrain_stops_cleanly_and_resumes(tmp_path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job(tmp_path / "ws", name="sigint", search={"epochs": 3})))
    job = load_job(job_file)

    for stage, command in (("outer_loop", "run"), ("retrain", "resume")):
        done = _interrupt_at(job_file, job, stage=stage, command=command, tmp_path=tmp_path)
        assert done.returncode == 130, done.stdout[-3000:]
        assert "interrupted" in done.stdout and "Traceback" not in done.stdout, done.stdout[-3000:]
        tracker = Tracker(job, task_name="rotten_tomatoes")
        assert not tracker.client.search_model_versions(f"name = '{tracker.model_name}'")  # nothing registered

    resumed = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", str(job_file), "--quiet"],
                             capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    tracker = Tracker(job, task_name="rotten_tomatoes")
    assert tracker.client.get_model_version_by_alias(tracker.model_name, "champion")
