"""The cluster layer: Ray connection and resources, the cluster configs, and `adaray submit` to a real
two-node Ray cluster on loopback (started with cluster/local_cluster.sh, reached only through the job
submission API and subprocesses, so it never meets a Ray another test module runs in this process)."""

import copy
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from tiny_jobs import tiny_job as tiny_job_dict

from cluster.config import ClusterConfig
from cluster.connect import (
    LOCAL_NODE_IP,
    TOKEN_AUTH_LOGGER,
    actor_slots,
    ensure_ray,
    shutdown_if_owned,
    trial_resources,
)
from cluster.submit import SubmitError, submit_job
from orchestrator.cli import main
from orchestrator.commands.cluster import project_root
from orchestrator.config import load_job, parse_job
from orchestrator.errors import AdarayError
from orchestrator.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "local_cluster.sh"
UNREACHABLE = "127.0.0.2:1"  # loopback, and nothing listens on port 1


@pytest.fixture
def token_warnings():
    """What Ray's token-auth module logs during the test (its handlers write to the stderr of Ray's
    import, which capfd misses)."""
    log, records = logging.getLogger(TOKEN_AUTH_LOGGER), []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


# --- the cluster configs -----------------------------------------------------------------------

def test_launcher_config_is_valid_for_the_installed_ray():
    config = yaml.safe_load((ROOT / "cluster" / "launcher.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does: merge the provider defaults
    validate_config(prepared)  # Ray's own schema and checks; raises when invalid
    nodes = prepared["available_node_types"]
    head, workers = nodes[prepared["head_node_type"]], [n for t, n in nodes.items() if t != prepared["head_node_type"]]
    assert not head["resources"].get("GPU") and head["max_workers"] == 0
    assert workers and all(w["resources"]["GPU"] >= 1 and w["max_workers"] >= 1 for w in workers)
    assert any("/home/ray/adaray" in c for c in prepared["worker_setup_commands"])

    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1  # a typo the schema must catch
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_rayjob_manifest_runs_adaray_on_gpu_workers_with_the_installed_ray():
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "cluster" / "rayjob.yaml").read_text())}
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"] == "python -m orchestrator.cli run /app/job.yaml"
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    head_container = head["template"]["spec"]["containers"][0]
    assert "rayStartParams" in head and head_container["image"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    mounts = {m["mountPath"]: m for m in head_container["volumeMounts"]}
    assert mounts["/app/job.yaml"]["name"] in {v["name"] for v in head["template"]["spec"]["volumes"]}
    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams"} <= group.keys()
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # The job file the ConfigMap mounts at /app/job.yaml is a valid adaray job.
    config_map = docs["ConfigMap"]
    assert config_map["metadata"]["name"] == head["template"]["spec"]["volumes"][0]["configMap"]["name"]
    parsed = parse_job(yaml.safe_load(config_map["data"]["job.yaml"]))
    assert parsed.cluster.gpus_per_trial > 0 and "://" in parsed.cache.uri


# --- connection and resources ------------------------------------------------------------------

def test_trial_resources_and_actor_slots(monkeypatch):
    assert trial_resources(ClusterConfig(cpus_per_trial=2, gpus_per_trial=0.5)) == {"cpu": 2.0, "gpu": 0.5}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    assert actor_slots() == 2  # one per GPU
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 6.0})
    assert actor_slots() == 6 and actor_slots(cpus_per_actor=4) == 1
    with pytest.raises(ValueError, match="cpus_per_actor"):
        actor_slots(cpus_per_actor=0)


def test_ensure_ray_starts_one_local_ray_and_stops_only_its_own(monkeypatch, token_warnings):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default: token auth on, and a warning saying so
    someone_elses = ray.is_initialized()  # a Ray another test module left running is not ours to stop
    try:
        summary = ensure_ray(ClusterConfig(num_cpus=2))
        assert token_warnings == []  # a local start is quiet
        again = ensure_ray(ClusterConfig(num_cpus=2))
        assert again == {**summary, "started": False}  # one Ray per process: reused
        assert summary["started"] is not someone_elses  # the pipeline stops only a Ray it started
        if not someone_elses:
            assert summary["cpus"] == 2 and summary["gpus"] == 0 and summary["nodes"] == 1
            assert summary["address"].startswith(f"{LOCAL_NODE_IP}:")  # bound to loopback
            assert actor_slots() == 2
    finally:
        shutdown_if_owned()
    assert ray.is_initialized() == someone_elses


def test_ensure_ray_fails_fast_on_an_unreachable_cluster(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach the Ray cluster at 127.0.0.2:1"):
        ensure_ray(ClusterConfig(address=UNREACHABLE))
    assert time.monotonic() - start < 10  # ray.init itself would retry for minutes


# --- submission errors that need no cluster ---------------------------------------------------

def test_submit_job_errors_are_one_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\n")
    with pytest.raises(SubmitError, match="job file not found"):
        submit_job(address="http://127.0.0.1:8265", job_file=tmp_path / "missing.yaml", working_dir=ROOT)
    with pytest.raises(SubmitError, match="dashboard's HTTP address"):
        submit_job(address="ray://127.0.0.1:10001", job_file=job, working_dir=ROOT)
    with pytest.raises(SubmitError, match="cannot reach") as err:
        submit_job(address=f"http://{UNREACHABLE}", job_file=job, working_dir=ROOT)
    assert "\n" not in str(err.value)


def test_submit_command_rejects_a_bad_job_before_contacting_the_cluster(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\ntask:\n  builtin: rotten_tomatoes\nserach: {}\n")
    assert main(["submit", str(job), "--address", f"http://{UNREACHABLE}"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'serach'" in err and "cannot reach" not in err


def test_submit_command_turns_submission_errors_into_one_line_errors(tiny_job, capsys):
    assert main(["submit", str(tiny_job), "--address", f"http://{UNREACHABLE}"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot reach the Ray cluster at 127.0.0.2:1" in err and "Traceback" not in err


def test_project_root_is_found_from_the_job_file_else_the_current_directory(tmp_path, monkeypatch):
    assert project_root(ROOT / "examples" / "any.yaml") == ROOT
    monkeypatch.chdir(ROOT / "cluster")
    assert project_root(tmp_path / "job.yaml") == ROOT
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdarayError, match="pyproject.toml"):
        project_root(tmp_path / "job.yaml")


def test_local_cluster_script_rejects_unknown_actions():
    proc = subprocess.run(["bash", str(SCRIPT), "restart"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr


# --- a real two-node cluster on loopback -------------------------------------------------------

def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_ports() -> tuple[int, int]:
    """A GCS port whose next three (client server, two dashboard agents) are free too, and a dashboard port."""
    for port in range(6400, 6600, 5):
        if all(_free(p) for p in (*range(port, port + 4), port + 1900)):
            return port, port + 1900
    raise RuntimeError("no free ports for the local cluster")


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    # Its own token, so the test neither needs nor touches the one in ~/.ray.
    token = tmp_path_factory.mktemp("ray-auth") / "token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port, dashboard_port = _free_ports()
    ports = ["--port", str(port), "--dashboard-port", str(dashboard_port)]
    try:
        start = subprocess.run(["bash", str(SCRIPT), "start", *ports], env=env, capture_output=True, text=True,
                               timeout=240)
        assert start.returncode == 0, start.stdout + start.stderr
        assert f"http://127.0.0.1:{dashboard_port}" in start.stdout
        yield {"url": f"http://127.0.0.1:{dashboard_port}", "env": env}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", *ports], env=env, capture_output=True, timeout=120)


@pytest.fixture
def tiny_job(tmp_path):
    rows = "".join(f"review {i} was {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    (tmp_path / "reviews.csv").write_text("text,label\n" + rows)
    job = tmp_path / "job.yaml"
    job.write_text("name: tiny\ntask:\n  path: reviews.csv\n")
    return job


@pytest.fixture
def micro_run_job(tmp_path):
    """A real job, as small as the flow allows: one configuration, one seed, a slice of real data."""
    job = tiny_job_dict(tmp_path / "ws", name="cluster-micro",
                        task={"max_examples": 96}, teacher={"max_train_examples": 64},
                        outer_loop={"rounds": 1, "configs_per_round": 1, "seeds": 1}, search={"epochs": 1},
                        budget={"register_top": 1})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _adaray(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_submit_runs_the_job_on_the_cluster(local_cluster, micro_run_job):
    url, env = local_cluster["url"], local_cluster["env"]
    proc = _adaray("submit", str(micro_run_job), "--address", url, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = re.search(r"submitted job (raysubmit_\w+)", proc.stdout).group(1)
    assert f"ray job logs {job_id} --address {url}" in proc.stdout
    assert "champion: rotten_tomatoes-student@champion" in proc.stdout  # the job's own output, streamed back
    ask = "import sys; from ray.job_submission import JobSubmissionClient as C; print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)"
    status = subprocess.run([sys.executable, "-c", ask, url, job_id], env=env, capture_output=True, text=True, timeout=60)
    assert status.stdout.strip() == "SUCCEEDED", status.stderr
    # The job ran on the cluster's Ray (two nodes), and registered its champion in the job's MLflow store.
    job = load_job(micro_run_job)
    tracker = Tracker(job, task_name="rotten_tomatoes")
    assert tracker.client.get_model_version_by_alias(tracker.model_name, "champion")


def test_submit_job_uploads_the_working_dir_passes_the_environment_on_and_reports_failures(local_cluster, tmp_path):
    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    (project / "jobs" / "job.yaml").write_text("name: shipped-with-the-project\n")
    (project / ".adaray").mkdir()
    (project / ".adaray" / "big.bin").write_bytes(b"0" * 1000)  # excluded from the upload
    script = (
        "import sys; from pathlib import Path; from cluster.submit import SubmitError, submit_job\n"
        "args = dict(address=sys.argv[1], job_file=Path(sys.argv[2]), working_dir=Path(sys.argv[3]))\n"
        "r = submit_job(**args, entrypoint='ls -A; printenv MLFLOW_TRACKING_URI ADARAY_TEST_VAR; cat',\n"
        "               env={'ADARAY_TEST_VAR': 'given'}, follow=True)\n"
        "print('RESULT', r.job_id, r.status)\n"
        "try:\n"
        "    submit_job(**args, entrypoint='echo first; echo the reason; exit 3; true', wait=True, follow=False)\n"
        "except SubmitError as exc:\n"
        "    print('FAILED', exc.job_id, exc)\n"
    )
    env = {**local_cluster["env"], "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"}  # never contacted
    proc = subprocess.run([sys.executable, "-c", script, local_cluster["url"], str(project / "jobs" / "job.yaml"),
                           str(project)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"RESULT raysubmit_\w+ SUCCEEDED", out)
    assert "name: shipped-with-the-project" in out  # `cat jobs/job.yaml`, relative to the upload
    assert "http://127.0.0.1:5999" in out and "given" in out
    assert "jobs" in out.split() and ".adaray" not in out.split()
    failed = re.search(r"FAILED (raysubmit_\w+) job (raysubmit_\w+) failed: (.*)", out)
    assert failed and failed.group(1) == failed.group(2)
    assert "exit code 3; last log lines:" in failed.group(3) and failed.group(3).endswith("first | the reason")
