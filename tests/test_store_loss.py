"""The tracking store goes away mid-run: a real MLflow server on loopback is stopped during the outer
loop. The driver retries where the user can see it, stops in one line that names `adaray resume`, and
keeps what it computed; once the server is back, `resume` logs it and registers a champion."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import yaml
from tiny_jobs import tiny_job

from orchestrator.config import load_job
from orchestrator.outer_loop import open_study
from orchestrator.tracking import Tracker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(tmp_path, port: int) -> subprocess.Popen:
    """`mlflow server` on loopback with a SQLite store and proxied artifacts, once it answers /health."""
    log = open(tmp_path / f"server-{time.monotonic_ns()}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _stage(job) -> str | None:
    try:
        return json.loads((job.run_dir / "status.json").read_text()).get("stage")
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_store_stopped_mid_run_then_resume_logs_what_was_computed(tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job(tmp_path / "ws", name="storeloss", tracking={"uri": uri})))
    job = load_job(job_file)
    server = _server(tmp_path, port)
    log = tmp_path / "run.log"
    try:
        with open(log, "w") as out:
            driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(job_file), "--quiet"],
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 900
            while _stage(job) != "outer_loop":  # the parent run is logged: the store was in use
                assert driver.poll() is None, f"driver exited early:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "never reached the outer loop"
                time.sleep(0.5)
            _stop(server)
            started = time.monotonic()
            try:
                code = driver.wait(timeout=600)
            finally:
                if driver.poll() is None:
                    os.killpg(driver.pid, signal.SIGKILL)
        text = log.read_text()
        assert code == 2, text[-3000:]
        assert "is not answering; retry 1/3" in text and "retry 3/3" in text
        assert f"the tracking store {uri} stopped answering" in text and "adaray resume" in text
        assert "Traceback" not in text
        assert time.monotonic() - started < 300
        # What was computed stays: the round's Tune results and every trial's checkpoint.
        assert any((job.run_dir / "tune").rglob("result.json"))

        server = _server(tmp_path, port)
        resumed = subprocess.run([sys.executable, "-m", "orchestrator.cli", "resume", str(job_file), "--quiet"],
                                 capture_output=True, text=True, timeout=1200)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        trials = open_study(job).trials
        assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        tracker = Tracker(job, task_name="rotten_tomatoes")
        keys = [r.data.tags["adaray.key"] for r in tracker.client.search_runs([tracker.experiment_id], max_results=1000)]
        assert len(keys) == len(set(keys))
        roles = tracker.runs_by_role()
        assert (roles["parent"], roles["config"], roles["trial"]) == (1, 4, 8), roles
        assert tracker.client.get_model_version_by_alias(tracker.model_name, "champion")
        running = tracker.client.search_runs([tracker.experiment_id], filter_string="attributes.status = 'RUNNING'")
        assert not running
    finally:
        if server.poll() is None:
            _stop(server)
