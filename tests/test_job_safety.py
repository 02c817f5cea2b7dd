"""Never lose a user's work: one driver per job, stores checked before any work, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml
from tiny_jobs import tiny_job

from orchestrator.cli import main
from orchestrator.config import load_job
from orchestrator.errors import AdarayError
from orchestrator.job_lock import job_lock, job_lock_path, read_lock


def _job_file(tmp_path, **overrides):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path / "ws", name="safety", **overrides)))
    return path


def test_a_live_holder_blocks_a_second_driver_and_a_dead_one_is_taken_over(tmp_path):
    job = load_job(_job_file(tmp_path))
    lock = job_lock_path(job)
    lock.parent.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "since": "earlier"}))
        with pytest.raises(AdarayError, match=f"already running \\(pid {sleeper.pid}"), job_lock(job):
            pass
        assert read_lock(lock)["pid"] == sleeper.pid  # the live holder's lock is untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    said = []
    with job_lock(job, say=said.append) as me:
        assert read_lock(lock)["pid"] == me["pid"] == os.getpid()
    assert said and "gone" in said[0]
    assert not lock.exists()  # released on the way out


def test_two_real_drivers_on_one_job(tmp_path, capsys):
    job_file = _job_file(tmp_path)
    run_dir = tmp_path / "ws" / "runs" / "safety"
    lock = job_lock_path(load_job(job_file))
    first = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(job_file), "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while read_lock(lock) is None:
            assert first.poll() is None and time.monotonic() < deadline, "the first driver never took the lock"
            time.sleep(0.2)
        import ray

        assert main(["run", str(job_file), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "already running" in err and str(first.pid) in err and "Traceback" not in err
        assert not ray.is_initialized()  # refused before any stage or Ray
        while not (run_dir / "status.json").is_file():
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The dead driver's lock is left behind: status says so, and the next driver takes it over.
    assert main(["status", str(job_file)]) == 0
    assert "the driver is gone: run `adaray resume" in capsys.readouterr().out


@pytest.mark.parametrize("command, code, said", [
    (["status"], 0, "not started"),
    (["cache", "verify"], 2, "no prepared data, teacher or cache yet"),
    (["cache", "info"], 2, "no prepared data, teacher or cache yet"),
])
def test_read_only_commands_on_a_job_never_run_write_nothing(tmp_path, capsys, command, code, said):
    job_file = _job_file(tmp_path)
    assert main([*command, str(job_file)]) == code
    out = capsys.readouterr()
    assert said in out.out + out.err
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("override, said", [
    ({"tracking": {"uri": "http://127.0.0.1:1"}}, "http://127.0.0.1:1 does not answer"),
    ({"cluster": {"address": "127.0.0.1:1"}}, "cannot reach the Ray cluster at 127.0.0.1:1"),
], ids=["tracking-server", "ray-cluster"])
def test_a_dead_server_is_one_line_before_any_work(tmp_path, capsys, override, said):
    job_file = _job_file(tmp_path, **override)
    started = time.monotonic()
    assert main(["run", str(job_file)]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert time.monotonic() - started < 30  # seconds, where it was minutes of silent retries (a shared 2-core machine is slow)
    assert not (tmp_path / "ws").exists()  # nothing was written, no stage ran


def test_an_unknown_tracking_scheme_fails_validation(tmp_path, capsys):
    assert main(["validate", str(_job_file(tmp_path, tracking={"uri": "foo://bar"}))]) == 2
    assert "scheme MLflow does not know" in capsys.readouterr().err


@pytest.mark.parametrize("where", [
    lambda p: (p / "a-file").write_text("") or p / "a-file" / "ws",  # a path under a file
    lambda p: "/proc/1/ws",  # a system folder nobody may write, root included
], ids=["under-a-file", "proc"])
def test_an_unwritable_workspace_is_one_line(tmp_path, capsys, where):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(tiny_job(where(tmp_path), name="safety")))
    assert main(["run", str(job_file)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


def test_a_read_only_workspace_is_one_line_and_nothing_is_written(tmp_path, capsys):
    """A read-only folder as the workspace: mode 0o500 for a user; root writes through modes, so for
    root the folder gets the immutable attribute (chattr +i), which binds root too."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    as_root = os.geteuid() == 0
    if as_root and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not supported: no folder is read-only to root")
    if not as_root:
        folder.chmod(0o500)
    try:
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump(tiny_job(folder / "ws", name="safety")))
        assert main(["run", str(job_file)]) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert list(folder.iterdir()) == []
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o700)


def test_pull_and_predict_against_a_dead_server_answer_in_seconds(tmp_path, capsys):
    started = time.monotonic()
    dead = ["--tracking-uri", "http://127.0.0.1:1"]
    assert main(["pull", "m@champion", "-o", str(tmp_path / "out"), *dead]) == 2
    assert "does not answer" in capsys.readouterr().err
    assert main(["predict", "m@champion", "--text", "good", *dead]) == 2
    assert "does not answer" in capsys.readouterr().err
    assert time.monotonic() - started < 15
    assert not (tmp_path / "out").exists()


def test_predict_names_a_missing_or_empty_folder_and_an_empty_text(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "--text", "good"]) == 2
    assert "no student folder at" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--text", "good"]) == 2
    assert "holds no student" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--text", " "]) == 2
    assert "--text is empty" in capsys.readouterr().err


def test_predict_names_the_file_a_student_folder_lacks(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"genotype": {}}')
    assert main(["predict", str(tmp_path), "--text", "good"]) == 2
    err = capsys.readouterr().err
    assert "is not a saved student (needs config.json and model.safetensors)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", [["pull", "m@champion", "-o", "OUT"], ["predict", "m@champion", "--text", "good"],
                                     ["export", "m@champion", "--onnx", "-o", "OUT"]], ids=["pull", "predict", "export"])
def test_a_missing_sqlite_store_creates_nothing(tmp_path, capsys, command):
    db = tmp_path / "none" / "mlflow.db"
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    assert main([*argv, "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_that_the_one_line_replaces(tmp_path):
    argv = [sys.executable, "-m", "orchestrator.cli"]
    plain = subprocess.run([*argv, "predict", str(tmp_path / "nope"), "--text", "x"], capture_output=True, text=True)
    debug = subprocess.run([*argv, "--debug", "predict", str(tmp_path / "nope"), "--text", "x"], capture_output=True,
                           text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "no student folder" in plain.stderr
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "AdarayError: no student folder" in debug.stderr


def _own_store(job, tmp_path):
    """The job with a SQLite store of its own: a module-scoped fixture elsewhere may have left
    $MLFLOW_TRACKING_URI pointing at its store, which a job without `tracking.uri` would use."""
    return job.model_copy(update={"tracking": job.tracking.model_copy(
        update={"uri": f"sqlite:///{tmp_path / 'registry.db'}"})})


def test_the_champion_never_moves_to_a_worse_version_on_the_same_data(tmp_path):
    from orchestrator.config import load_job
    from orchestrator.tracking import Tracker

    tracker = Tracker(_own_store(load_job(_job_file(tmp_path)), tmp_path), task_name="t")
    client = tracker.client
    client.create_registered_model(tracker.model_name)

    def version(score, fingerprint="f1", job="a", tag="dev_score"):
        return client.create_model_version(tracker.model_name, source=str(tmp_path), tags={
            tag: str(score), "data_fingerprint": fingerprint, "job": job}).version

    # `good` carries the tag of versions registered before the task's metric was named.
    good, worse = version(0.786, tag="dev_accuracy"), version(0.5, job="b")
    other_data, better = version(0.4, "f2"), version(0.8)
    assert tracker.promote("champion", good, score=0.786) is None
    kept = tracker.promote("champion", worse, score=0.5)
    assert f"stays on version {good}" in kept and "0.7860 > 0.5000" in kept
    assert client.get_model_version_by_alias(tracker.model_name, "champion").version == good
    assert tracker.promote("champion", better, score=0.8) is None  # a better one moves it
    assert tracker.promote("champion", other_data, score=0.4) is None  # other data: scores do not compare
    assert client.get_model_version_by_alias(tracker.model_name, "champion").version == other_data


@pytest.mark.parametrize(("rule", "tag", "figures"), [
    ({"max_latency_ms": 5.0}, "latency_b1_p95_ms", (9.0, 4.0, 3.0)),  # p95 ms: the first is over
    ({"min_speedup": 10.0}, "speedup", (6.0, 12.0, 15.0)),  # times faster than the teacher: the first is under
])
def test_the_champion_is_decided_by_the_jobs_budget_first(tmp_path, rule, tag, figures):
    from orchestrator.config import load_job
    from orchestrator.tracking import Tracker

    job = load_job(_job_file(tmp_path))
    job = job.model_copy(update={"budget": job.budget.model_copy(update=rule)})
    tracker = Tracker(_own_store(job, tmp_path), task_name="t")
    client = tracker.client
    client.create_registered_model(tracker.model_name)

    def version(score, figure):
        return client.create_model_version(tracker.model_name, source=str(tmp_path), tags={
            "dev_score": str(score), "data_fingerprint": "f1", "job": "a", tag: str(figure)}).version

    slow_best, fast, faster_worse = (version(s, f) for s, f in zip((0.80, 0.77, 0.75), figures))
    assert tracker.promote("champion", slow_best, score=0.80) is None
    assert tracker.promote("champion", fast, score=0.77) is None  # over budget loses to within it
    kept = tracker.promote("champion", slow_best, score=0.80)
    assert f"stays on version {fast}" in kept and "budget" in kept
    kept = tracker.promote("champion", faster_worse, score=0.75)  # both within: the score decides
    assert f"stays on version {fast}" in kept and "0.7700 > 0.7500" in kept
    assert client.get_model_version_by_alias(tracker.model_name, "champion").version == fast


def test_rejected_data_starts_no_ray_and_leaves_no_run_files(tmp_path, capsys):
    import ray

    data = tmp_path / "reviews.csv"
    data.write_text("review,stars\ngood film,5\nbad film,1\n")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"name": "bad-data", "workspace": str(tmp_path / "ws"),
                                        "task": {"path": str(data), "text_column": "review",
                                                 "label_column": "sentiment"}}))
    started = time.monotonic()
    assert main(["run", str(job_file)]) == 2
    err = capsys.readouterr().err
    assert "sentiment" in err and "Traceback" not in err
    assert time.monotonic() - started < 20 and not ray.is_initialized()
    assert not (tmp_path / "ws" / "runs").exists()


def test_a_second_builder_waits_for_the_first(tmp_path):
    from orchestrator.job_lock import wait_lock

    lock = tmp_path / ".key.lock"
    builder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    threading.Thread(target=builder.wait, daemon=True).start()  # reaped as soon as it ends, as init would
    lock.write_text(json.dumps({"pid": builder.pid, "host": socket.gethostname(), "since": "now"}))
    said, started = [], time.monotonic()
    with wait_lock(lock, what="the teacher cache k", say=said.append, poll_s=0.1):
        waited = time.monotonic() - started
        assert builder.poll() is not None  # entered only once the first builder was gone
    builder.wait()
    assert waited >= 1.0 and "waiting for pid" in said[0] and "the teacher cache k" in said[0]
    assert not lock.exists()


def test_ctrl_c_during_registration_finishes_it_and_a_second_stops_at_once():
    from orchestrator.errors import Interrupted, deferred_interrupt

    def interrupt(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGINT, interrupt)  # what the CLI installs
    try:
        finished = []
        with pytest.raises(Interrupted), deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            finished.append("registered")  # the block runs to its end
        assert finished == ["registered"]
        with pytest.raises(Interrupted), deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            finished.append("never")
        assert finished == ["registered"]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_lost_store_is_retried_visibly_then_one_line(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import StoreGuard, StoreUnreachable

    said = []
    guard = StoreGuard("http://127.0.0.1:1", run_dir=tmp_path, say=said.append, waits_s=(0.01, 0.01))
    with pytest.raises(StoreUnreachable, match=f"stopped answering; what the job computed is on disk in {tmp_path}.*"
                                               "adaray resume"):
        guard(MlflowClient("http://127.0.0.1:1").search_experiments)
    assert [m.split(";")[1] for m in said] == [" retry 1/2 in 0.01 s", " retry 2/2 in 0.01 s"]

    def refused():
        raise ValueError("a request the store answered and refused")

    with pytest.raises(ValueError, match="refused"):  # not a lost store: no retry
        guard(refused)
    assert len(said) == 2


def test_runs_a_dead_driver_left_running_are_failed_then_logged_again(tmp_path):
    from mlflow.entities import RunStatus

    from orchestrator.tracking import Tracker

    tracker = Tracker(load_job(_job_file(tmp_path)), task_name="rotten_tomatoes")
    run_id, to_log = tracker.ensure_run("safety/config-0", name="config-0", role="config")
    assert to_log
    done, _ = tracker.ensure_run("safety/config-1", name="config-1", role="config")
    tracker.finish(done)
    # The driver dies here: config-0 stays RUNNING. The next driver settles it, then logs it again.
    assert tracker.settle_orphans() == 1
    assert tracker.client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.FAILED)
    assert tracker.ensure_run("safety/config-0", name="config-0", role="config") == (run_id, True)
    assert tracker.ensure_run("safety/config-1", name="config-1", role="config") == (done, False)
    tracker.finish(run_id)
    assert tracker.settle_orphans() == 0


def test_a_file_where_the_run_folder_belongs_is_one_line_and_no_stage_output(tmp_path, capsys):
    job_file = _job_file(tmp_path)
    run_dir = tmp_path / "ws" / "runs" / "safety"
    run_dir.parent.mkdir(parents=True)
    run_dir.write_text("a file the user keeps here")
    assert main(["run", str(job_file)]) == 1
    err = capsys.readouterr().err
    assert str(run_dir) in err and "adaray resume" in err and "Traceback" not in err
    assert run_dir.read_text() == "a file the user keeps here"
    assert not (tmp_path / "ws" / "teachers").exists()  # stopped before the teacher stage


def test_status_says_when_the_tracking_store_is_gone(tmp_path, capsys):
    from orchestrator.pipeline import StatusFile

    job_file = _job_file(tmp_path)
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    StatusFile(load_job(job_file)).update(stage="done", champion="abc", model="t-student", champion_version="1",
                                          tracking_uri=f"sqlite:///{db}", parent_run_id="r1")
    assert main(["status", str(job_file)]) == 0
    assert "store is missing" not in capsys.readouterr().out
    db.unlink()  # the user deleted the store after the job finished
    assert main(["status", str(job_file)]) == 0
    out = capsys.readouterr().out
    assert "champion: t-student version 1" in out and "the tracking store is missing" in out


def test_a_teacher_no_better_than_the_majority_class_stops_the_job_before_ray(tmp_path, capsys):
    """The whole `adaray run` on a pandas-written file whose texts carry no signal (every text the same,
    labels 80/20): the teacher can only predict one class, so it cannot beat the majority class. The job
    stops in one line naming the metric, before Ray, the cache or any MLflow run."""
    import pandas as pd
    import ray

    rows = 200
    pd.DataFrame({"review": ["the same words every time"] * rows,
                  "verdict": ["liked" if i % 5 else "disliked" for i in range(rows)]}).to_csv(tmp_path / "d.csv")
    job = tiny_job(tmp_path / "ws", name="no-signal")
    job["task"] = {"path": str(tmp_path / "d.csv"), "text_column": "review", "label_column": "verdict",
                   "metric": "f1_macro", "max_length": 16}
    job["budget"] = {"min_over_majority": 0.02}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "the teacher scores dev macro-F1" in error and "no better than always predicting the majority class" in error
    assert "Traceback" not in err
    assert not ray.is_initialized()
    workspace = tmp_path / "ws"
    assert not (workspace / "cache").exists() and not (workspace / "mlflow").exists()
