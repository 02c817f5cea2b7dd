"""MLflow: runs, artifacts, the Model Registry and the student pyfunc. The only module that imports mlflow.

Run layout per job: one parent run; one child run per outer-loop configuration; one nested
run per Tune trial (under its configuration) and one per retrained student. Every run carries an
`adaray.key` tag, and every "start" looks that key up first, so a resumed job never duplicates a
run or a registry version.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from orchestrator.config import JobConfig
from orchestrator.errors import AdarayError
from workers.local_files import check_destination, deliver_files
from workers.student_files import CONFIG_FILE, ONNX_FILE, WEIGHTS_FILE, is_student_folder

# Per-file download bars and INFO lines drown the job's own progress display.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("mlflow").setLevel(logging.ERROR)
# MLflow's own retries are silent and last minutes (7, doubling); keep them short, ours below say so.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
STORE_RETRY_WAITS_S = (5.0, 15.0, 30.0)  # then the job stops: about a minute without the store

KEY_TAG = "adaray.key"
ROLE_TAG = "adaray.role"


def default_tracking_uri(job: JobConfig) -> str:
    if job.tracking.uri:
        return job.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = (job.workspace_path / "mlflow").resolve()
    return f"sqlite:///{folder / 'mlflow.db'}"


class StoreUnreachable(AdarayError):
    """A tracking store that cannot be used: one line naming the URI and what to do."""


def _lost_store(exc: BaseException) -> bool:
    """True for a store that does not answer (refused, reset, timed out), not for a request it refused."""
    import requests

    while exc is not None:
        if isinstance(exc, ConnectionError | TimeoutError | requests.exceptions.ConnectionError
                      | requests.exceptions.Timeout):
            return True
        if "Max retries exceeded" in str(exc) or "Connection refused" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class StoreGuard:
    """Calls to the tracking store with bounded, visible retries while it does not answer; then one
    line that says the work is on disk and how to carry on."""

    def __init__(self, uri: str, *, run_dir: Path, say: Callable[[str], None], waits_s=STORE_RETRY_WAITS_S) -> None:
        self.uri, self.run_dir, self.say, self.waits_s = uri, run_dir, say, waits_s

    def __call__(self, fn: Callable, *args, **kwargs):
        for attempt in range(len(self.waits_s) + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _lost_store(exc):
                    raise
                if attempt == len(self.waits_s):
                    raise StoreUnreachable(
                        f"the tracking store {self.uri} stopped answering; what the job computed is on disk in "
                        f"{self.run_dir} and the workspace caches: start the store again and run "
                        "`adaray resume JOB.yaml`") from exc
                wait = self.waits_s[attempt]
                self.say(f"the tracking store {self.uri} is not answering; retry {attempt + 1}/{len(self.waits_s)} "
                         f"in {wait:g} s")
                time.sleep(wait)
        raise AssertionError("unreachable")


class _GuardedClient:
    """An MlflowClient whose every method goes through a StoreGuard."""

    def __init__(self, client: MlflowClient, guard: StoreGuard) -> None:
        self._client, self._guard = client, guard

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        return functools.partial(self._guard, attr) if callable(attr) else attr


def check_tracking_store(uri: str, *, create: bool = True, timeout_s: float = 3.0) -> None:
    """Seconds, before any expensive work: a server answers its health check; a SQLite store's
    folder is writable (`create`) or its file exists (read-only commands must not create stores)."""
    import urllib.error
    import urllib.request

    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreUnreachable(f"the MLflow tracking server {uri} does not answer ({reason}); start it, or "
                                   "point tracking.uri / MLFLOW_TRACKING_URI at a running one") from None
    if uri.startswith("sqlite:"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not create:
            if not db.is_file():
                raise StoreUnreachable(f"no MLflow store at {db}: has a job run with this workspace? "
                                       "(give --workspace or --tracking-uri)")
            return
        folder = next((p for p in (db.parent, *db.parents) if p.exists()), None)
        if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK):
            raise StoreUnreachable(f"cannot write the MLflow store {db}: {folder} is not a writable folder")


def ui_command(job: JobConfig) -> str:
    uri = default_tracking_uri(job)
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --port 5000"
    return f"open {uri}"


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class StudentPyfunc(PythonModel):
    """The registered model: tokenizer + student in one artifact folder; text in, labels out."""

    def load_context(self, context) -> None:
        from workers.student import StudentPredictor

        self._predictor = StudentPredictor.from_pretrained(context.artifacts["student"])

    def __getstate__(self) -> dict:
        # MLflow pickles the model after its input-example check has loaded it; the student lives in
        # the artifacts and load_context rebuilds it (an onnxruntime session cannot be pickled at all).
        return {k: v for k, v in self.__dict__.items() if k != "_predictor"}

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[Prediction]:
        """`params={"exit_threshold": t}`: early exit at t (0 runs every cell); the student's default
        (chosen on dev) otherwise."""
        threshold = (params or {}).get("exit_threshold")
        return [Prediction(**p) for p in self._predictor.predict(list(model_input), exit_threshold=threshold)]


class Tracker:
    """One job's view of MLflow. Create it on the driver only."""

    def __init__(self, job: JobConfig, *, task_name: str, say: Callable[[str], None] | None = None) -> None:
        self.job = job
        self.uri = default_tracking_uri(job)
        if self.uri.startswith("sqlite:"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)  # mlflow.start_run and log_model read only the global URI
        self.guard = StoreGuard(self.uri, run_dir=job.run_dir, say=say or (lambda m: print(m, file=sys.stderr)))
        self.client = _GuardedClient(MlflowClient(self.uri), self.guard)
        self.model_name = job.tracking.model_name or f"{task_name}-student"
        self.experiment_id = self._experiment(job.tracking.experiment or f"adaray-{job.name}")

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # artifacts next to the store, not in the cwd
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    # -- runs ---------------------------------------------------------------------------------
    def find_run(self, key: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def ensure_run(
        self, key: str, *, name: str, role: str, parent_id: str | None = None, tags: dict | None = None
    ) -> tuple[str, bool]:
        """The run with this key, created if missing. Returns (run_id, to_log): to_log unless the run
        was finished, so a run a dead driver left half-logged is logged again (each log is idempotent)."""
        if (run_id := self.find_run(key)) is not None:
            return run_id, self.client.get_run(run_id).info.status != RunStatus.to_string(RunStatus.FINISHED)
        all_tags = {KEY_TAG: key, ROLE_TAG: role, "adaray.job": self.job.name, **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id, True

    def parent_run(self) -> str:
        run_id, _ = self.ensure_run(f"{self.job.name}/parent", name=self.job.name, role="parent")
        return run_id

    def log_params(self, run_id: str, params: dict) -> None:
        existing = self.client.get_run(run_id).data.params
        for k, v in _flatten(params).items():
            if k not in existing:
                self.client.log_param(run_id, k, _short(v))

    def log_metrics(self, run_id: str, metrics: dict, *, step: int | None = None) -> None:
        for k, v in metrics.items():
            if isinstance(v, bool):
                v = int(v)
            if isinstance(v, int | float) and v == v:  # skip NaN
                self.client.log_metric(run_id, k, float(v), step=step or 0)

    def set_tags(self, run_id: str, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, _short(v))

    def log_artifact(self, run_id: str, path: Path, *, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def finish(self, run_id: str, *, failed: bool = False) -> None:
        status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        self.client.set_terminated(run_id, status=status)

    def settle_orphans(self) -> int:
        """Mark FAILED the runs of this job that a dead driver left RUNNING (call it holding the job's
        lock); those the job reaches again are logged again and finished. Returns how many."""
        left = self.client.search_runs([self.experiment_id], max_results=10_000,
                                       filter_string=f"attributes.status = 'RUNNING' and tags.`adaray.job` = '{self.job.name}'")
        for run in left:
            self.client.set_tag(run.info.run_id, "adaray.note", "its driver died; a later run of the job resumes it")
            self.finish(run.info.run_id, failed=True)
        return len(left)

    def runs_by_role(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.client.search_runs([self.experiment_id], max_results=10_000):
            role = run.data.tags.get(ROLE_TAG, "?")
            counts[role] = counts.get(role, 0) + 1
        return counts

    # -- registry -----------------------------------------------------------------------------
    def register_student(
        self, *, run_id: str, student_dir: Path, key: str, tags: dict[str, Any], input_example: list[str]
    ) -> str:
        """Log the student as a pyfunc on `run_id` and register it; returns the version.

        Idempotent: a version tagged with this key already in the registry is returned as is.
        """
        for mv in self.client.search_model_versions(f"name = '{self.model_name}'"):
            if mv.tags.get(KEY_TAG) == key:
                return mv.version
        # The signature's params (MLflow passes their defaults when a caller gives none): the exit
        # threshold the student was given on dev.
        params = {"exit_threshold": float(json.loads((student_dir / CONFIG_FILE).read_text())
                                          .get("exit_threshold", 0.0))}

        def log_model():
            with _active_run(run_id):
                return mlflow.pyfunc.log_model(
                    name="student", python_model=StudentPyfunc(), artifacts={"student": str(student_dir)},
                    input_example=(input_example, params),
                )

        def register():
            # MLflow prints "Successfully registered model" and "Created version" per version; the job's
            # summary names the version that matters. What it printed comes back if it fails.
            printed = io.StringIO()
            try:
                with redirect_stderr(printed):
                    return mlflow.register_model(info.model_uri, self.model_name,
                                                 tags={KEY_TAG: key, **{k: _short(v) for k, v in tags.items()}})
            except BaseException:
                sys.stderr.write(printed.getvalue())
                raise

        info = self.guard(log_model)
        return self.guard(register).version

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def promote(self, alias: str, version: str, *, score: float) -> str | None:
        """Point `alias` at `version` unless the version it points at now is better on the same data
        (another job's, or an earlier run's): within this job's budget where `version` is not, or as
        much within it and with a higher score. Returns why it was kept, or None when it moved."""
        try:
            current = self.client.get_model_version_by_alias(self.model_name, alias)
        except Exception:  # MLflow raises its own type when the alias does not exist yet
            current = None
        mine = self.client.get_model_version(self.model_name, version)
        if current is not None and current.version != version:
            same_data = current.tags.get("data_fingerprint") == mine.tags.get("data_fingerprint")
            # dev_accuracy: the tag of versions registered before the task's metric was named.
            theirs = float(current.tags.get("dev_score", current.tags.get("dev_accuracy", "nan")))
            their_fit, my_fit = self.fits_budget(current.tags), self.fits_budget(mine.tags)
            why = None
            if same_data and their_fit and not my_fit:
                why = "within this job's budget, this version is not"
            elif same_data and their_fit == my_fit and theirs > score:
                why = f"dev {theirs:.4f} > {score:.4f}"
            if why:
                return (f"@{alias} stays on version {current.version} (job {current.tags.get('job', '?')}, {why}); "
                        "move it by hand with MlflowClient.set_registered_model_alias")
        self.set_alias(alias, version)
        return None

    def fits_budget(self, tags: dict[str, str]) -> bool:
        """Whether a version's tags meet this job's latency and size budget (a figure not tagged counts
        as met: versions from before the tag compare by score alone)."""
        budget = self.job.budget
        p95 = tags.get(f"latency_b{budget.latency_batch}_p95_ms")
        params, speedup = tags.get("params"), tags.get("speedup")
        return ((budget.max_latency_ms is None or p95 is None or float(p95) <= budget.max_latency_ms)
                and (budget.max_params is None or params is None or int(float(params)) <= budget.max_params)
                and (budget.min_speedup is None or speedup is None or float(speedup) >= budget.min_speedup))


def pull_student(ref: str, *, dst: Path, tracking_uri: str, force: bool = False) -> Path:
    """Fetch a registered student (NAME@ALIAS, NAME/VERSION, NAME or a models:/ URI) into folder `dst`.

    `dst` is checked before anything is downloaded; a non-empty one needs `force`, and even then
    only the student's own files in it change (workers.local_files.deliver_files).
    """
    check_destination(dst, force=force)
    check_tracking_store(tracking_uri, create=False)
    model_uri = resolve_model_uri(ref, tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="adaray-pull-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp,
                                                         tracking_uri=tracking_uri, registry_uri=tracking_uri))
        found = [p for p in local.rglob(CONFIG_FILE) if is_student_folder(p.parent)]
        if not found:
            raise FileNotFoundError(f"{model_uri} holds no student folder ({CONFIG_FILE} + {WEIGHTS_FILE} or {ONNX_FILE})")
        # The outermost: a cascade's folder holds its two students' folders
        return deliver_files(min(found, key=lambda p: len(p.parts)).parent, dst, force=force)


def resolve_model_uri(ref: str, *, tracking_uri: str) -> str:
    """`NAME@ALIAS`, `NAME/VERSION`, `NAME` (latest) or a full `models:/` / `runs:/` URI."""
    if "://" in ref or ref.startswith(("models:/", "runs:/")):
        return ref
    if "@" in ref or "/" in ref:
        return f"models:/{ref}"
    versions = MlflowClient(tracking_uri).search_model_versions(f"name = '{ref}'")
    if not versions:
        raise LookupError(f"no registered model named {ref!r}")
    return f"models:/{ref}/{max(int(v.version) for v in versions)}"


@contextmanager
def _active_run(run_id: str) -> Iterator[None]:
    # log_model needs an active run; resume ours without ending it (its owner ends it).
    with mlflow.start_run(run_id=run_id):
        yield
    # start_run(...) as a context manager sets the run FINISHED on exit; the caller finishes again.


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s[:5000]
