"""The job-file schema: the layer configs composed into one validated document.

Each layer owns its config (search_space/, workers/, cluster/, orchestrator/tasks.py); this
module only composes them, adds the orchestrator's own (outer loop, tracking, budget) and turns
validation failures into one-line errors with "did you mean" suggestions.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.config import ClusterConfig
from orchestrator.errors import AdarayError
from orchestrator.tasks import TaskConfig
from search_space.config import SearchSpaceConfig, TransformerConfig
from workers.config import CacheConfig, RetrainConfig, SearchConfig, TeacherConfig, Variant


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamRange(_Config):
    """A searched parameter: a float/int range (optionally log-scaled) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    int: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamRange:
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("give either choices: [...] or low: and high:")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must not be empty")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low is not None and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


# The parameters the outer loop may search, and where each one lands in a trial's configs.
SEARCHABLE = {
    "beta": ("search", "beta"),
    "gamma": ("search", "gamma"),
    "lr_weights": ("search", "lr_weights"),
    "lr_alpha": ("search", "lr_alpha"),
    "kd_temperature": ("search", "kd_temperature"),
    "tau_start": ("search", "tau_start"),
    "tau_end": ("search", "tau_end"),
    "k_max": ("space", "k_max"),
    "embed_dim": ("space", "embed_dim"),
    "embedding_rank": ("space", "embedding_rank"),  # e.g. {choices: [null, 32]}: full and low-rank tables compete
    "embedding_kronecker": ("space", "embedding_kronecker"),  # e.g. {choices: [null, 32]}: Kronecker tables too
}


def _default_params() -> dict[str, ParamRange]:
    return {
        "beta": ParamRange(low=0.02, high=0.3, log=True),
        "gamma": ParamRange(low=0.5, high=0.95),
        "lr_weights": ParamRange(low=5e-4, high=5e-3, log=True),
        "tau_end": ParamRange(low=0.05, high=0.3, log=True),
    }


class ScreenConfig(_Config):
    """The second fidelity: a KD retrain of each configuration's best candidates.

    The supernet's inherited-weight score picks `top` candidates per configuration; each is
    retrained and scored on dev, and that score (with the student's cost) is what Optuna is told
    and what picks the finalists. `fidelity: short` retrains them briefly (`epochs`,
    `max_train_examples`) and the finalists again in full; `full` retrains each once, as the
    finalists are, so the finalists are the best of them by the score they are served with.
    """

    fidelity: Literal["short", "full"] = "short"
    top: int = Field(2, ge=1, description="candidates per configuration to retrain")
    # One epoch over the whole transfer set: measured on rotten_tomatoes, a full retrain's epoch-1 dev
    # score ranks students as its final one does, while 1 epoch on 4,000 rows left 3 of 8 at the majority class.
    epochs: int = Field(1, ge=1, description="the short screen's epochs (fidelity: short)")
    max_train_examples: int | None = Field(None, ge=1, description="the short screen's; default: the whole transfer set")
    finalists: int = Field(3, ge=1, description="best screened students that get the full retrain (at full fidelity: already have it)")
    # Random search beat alpha's finalists on rotten_tomatoes (bench/search_quality.py, 3 seeds), so each job
    # measures which source serves its task; against the fixed mix, 3 seeds there: -0.10 dev, within the noise.
    allocate: Literal["fixed", "measured"] = Field(
        "measured", description="fixed: every round screens `top` of alpha's candidates and the uniform draws per "
        "configuration; measured: from round 2 on, a configuration's screen slots (as many) all go to the source, "
        "alpha or uniform draws, whose screened students scored higher on the mean in the rounds before by more "
        "than one standard error; within it the mix stays")

    @property
    def is_full_retrain(self) -> bool:
        """Each screen is the job's own retrain: a finalist is trained once, in the screen, under its key."""
        return self.fidelity == "full"

    @model_validator(mode="after")
    def _full_is_the_retrain(self) -> ScreenConfig:
        if self.is_full_retrain and (given := sorted({"epochs", "max_train_examples"} & self.model_fields_set)):
            raise ValueError(f"{' and '.join(given)} size the short screen, but fidelity: full retrains each candidate "
                             "as the job's retrain (retrain.epochs); drop them, or use fidelity: short")
        return self


class OuterLoopConfig(_Config):
    study_name: str | None = Field(None, description="default: the job name")
    rounds: int = Field(2, ge=1)
    configs_per_round: int = Field(2, ge=1)
    seeds: int = Field(2, ge=1, description="Tune trials per configuration")
    # score: the task's metric (accuracy or macro-F1) on dev. "accuracy" is read as "score" (job files of
    # before the metric was named).
    objectives: tuple[Literal["score"], Literal["latency", "params"]] = ("score", "latency")
    params: dict[str, ParamRange] = Field(default_factory=_default_params)
    sampler_seed: int = 0
    max_trials: int | None = Field(None, ge=1, description="stop once this many trials ran")
    max_wall_minutes: float | None = Field(None, gt=0, description="stop starting rounds after this")
    screen: ScreenConfig = ScreenConfig()

    @field_validator("objectives", mode="before")
    @classmethod
    def _score_was_accuracy(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and value and value[0] == "accuracy":
            return ("score", *value[1:])
        return value

    @model_validator(mode="after")
    def _known_params(self) -> OuterLoopConfig:
        for name in self.params:
            if name not in SEARCHABLE:
                raise ValueError(f"unknown searched parameter {name!r}{_suggest(name, SEARCHABLE)}; "
                                 f"allowed: {', '.join(SEARCHABLE)}")
        return self


# URI schemes of MLflow's tracking stores (the part before any "+driver").
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


class TrackingConfig(_Config):
    # None: MLflow with a SQLite store in the workspace (or $MLFLOW_TRACKING_URI when set).
    uri: str | None = None
    experiment: str | None = Field(None, description="default: adaray-<job name>")
    model_name: str | None = Field(None, description="default: <task>-student")

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        scheme = (uri or "").split(":", 1)[0].lower() if uri and "://" in uri else None
        if scheme is not None and scheme.split("+", 1)[0] not in TRACKING_SCHEMES:
            raise ValueError(f"tracking.uri {uri!r} has a scheme MLflow does not know ({scheme!r}); use "
                             "sqlite:///PATH, http(s)://HOST:PORT, a database URI or a folder")
        return uri


class BudgetConfig(_Config):
    """How the champion is picked from the Pareto front of retrained students."""

    max_latency_ms: float | None = Field(None, gt=0, description="best score (the task's metric) under this p95 latency")
    latency_batch: Literal[1, 128] = 1
    max_params: int | None = Field(None, ge=1)
    min_speedup: float | None = Field(
        None, gt=0, description="only students at least this many times faster than the teacher at batch 1 and at "
        "batch 128 (the mean per call, timed side by side in the job); with max_latency_ms, both apply")
    within_teacher_points: float | None = Field(
        None, ge=0, description="smallest student within this many points of the teacher's score (the task's metric)"
    )
    min_over_majority: float = Field(
        0.02, ge=-1, le=1, description="the teacher and the champion must beat always predicting the majority "
        "class by this much (task's metric), or the job stops before distilling or registering; -1 turns it off")
    register_top: int = Field(3, ge=1, description="how many Pareto-front students to register")


class CascadeConfig(_Config):
    """Cascades (workers/cascade.py): the budget's pick among the students answers the texts it is sure of,
    the job's best student the rest. One candidate per share, each scored and timed as served."""

    defer: list[float] = Field(
        default_factory=list, description="shares of search_valid's texts the front hands to the back, each a "
        "cascade of its own on the Pareto front (the budget takes the best that meets it); empty: no cascades")

    @field_validator("defer")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        if any(not 0 < d < 1 for d in v):
            raise ValueError(f"{v}: each share must lie between 0 and 1, such as 0.1 for a tenth of the texts")
        if len(set(v)) < len(v):
            raise ValueError(f"{v} names a share twice; list each once")
        return v


class JobConfig(_Config):
    name: str = Field(..., description="job name: names the Optuna study, MLflow experiment and run folder")
    workspace: str = ".adaray"
    task: TaskConfig
    teacher: TeacherConfig = TeacherConfig()
    cache: CacheConfig = CacheConfig()
    space: SearchSpaceConfig = SearchSpaceConfig()
    search: SearchConfig = SearchConfig()
    retrain: RetrainConfig = RetrainConfig()
    small_transformers: list[TransformerConfig] = Field(
        default_factory=list, description="the small-transformer family (TinyBERT): each member is distilled from "
        "the cache with the retrain settings, beside the searched finalists, and stands on the same Pareto front")
    variants: list[Variant] = Field(
        default_factory=list, description="serving variants of every retrained student, each a candidate of its own "
        "on the Pareto front: onnx (onnxruntime, fp32), onnx-int8 (onnxruntime, int8 weights)")
    cascade: CascadeConfig = CascadeConfig()
    outer_loop: OuterLoopConfig = OuterLoopConfig()
    cluster: ClusterConfig = ClusterConfig()
    tracking: TrackingConfig = TrackingConfig()
    budget: BudgetConfig = BudgetConfig()

    @model_validator(mode="after")
    def _name(self) -> JobConfig:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError("name may hold letters, digits, '.', '_' and '-' only")
        return self

    @model_validator(mode="after")
    def _variants_once(self) -> JobConfig:
        if len(set(self.variants)) < len(self.variants):
            raise ValueError(f"variants: {self.variants} names one twice; list each once")
        return self

    @model_validator(mode="after")
    def _searched_values_fit(self) -> JobConfig:
        """Each searched range's ends and each choice must be a value its target field takes, checked
        by that field's own config now, not when the trials start."""
        for name, r in self.outer_loop.params.items():
            section, field = SEARCHABLE[name]
            for value in r.choices if r.choices is not None else (r.low, r.high):
                if r.choices is None and r.int:
                    value = int(value)
                try:
                    if section == "space":
                        SearchSpaceConfig.from_dict({**self.space.to_dict(), field: value})
                    else:
                        SearchConfig.model_validate({**self.search.model_dump(), field: value})
                except ValidationError as exc:
                    err = exc.errors()[0]
                    raise ValueError(f"outer_loop.params.{name}: {value!r} is not a valid {section}.{field} "
                                     f"({err['msg'].removeprefix('Value error, ')})") from None
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"outer_loop.params.{name}: {value!r} is not a valid {section}.{field} ({exc})") from None
        return self

    @property
    def workspace_path(self) -> Path:
        # Absolute: Tune trials and Ray tasks run in folders of their own, where a relative
        # workspace would point somewhere else.
        return Path(self.workspace).expanduser().resolve()

    @property
    def study_name(self) -> str:
        return self.outer_loop.study_name or self.name

    @property
    def run_dir(self) -> Path:
        return self.workspace_path / "runs" / self.name


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model (or dataclass) whose fields a validation-error location points into."""
    model: Any = JobConfig
    parts = list(loc[:-1])
    while parts:
        if typing.get_origin(model) is dict:  # a mapping's key (outer_loop.params.beta): into its values
            model, _ = typing.get_args(model)[1], parts.pop(0)
            continue
        part = parts.pop(0)
        fields = getattr(model, "model_fields", None) or getattr(model, "__dataclass_fields__", {})
        field = fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = getattr(field, "annotation", None) or getattr(field, "type", None)
    return model


def _one_line(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not str(p).startswith("function-after"))
    where = ".".join(str(p) for p in loc) or "job"
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        model = _model_at(loc)
        fields = getattr(model, "model_fields", None) or getattr(model, "__dataclass_fields__", {}) or {}
        fields = [f for f in fields if not f.startswith("_")]
        hint = _suggest(loc[-1], fields)
        allowed = f"; allowed keys: {', '.join(fields)}" if fields else ""
        return f"{source}: unknown key '{where}'{hint}{allowed}"
    if err["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    msg = err["msg"].removeprefix("Value error, ")
    ctx = err.get("ctx", {})
    if "expected" in ctx:
        msg = f"{msg} (got {err.get('input')!r})"
    return f"{source}: {where}: {msg}" if loc else f"{source}: {msg}"


def _boolean_number(data: Any, model: Any, prefix: str = "") -> str | None:
    """The first key of `data` that holds true/false where `model` wants a number (pydantic would read
    `epochs: true` as 1), or None."""
    fields = getattr(model, "model_fields", None)
    if not isinstance(data, dict) or not fields:
        return None
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            continue
        kinds = set(typing.get_args(field.annotation)) or {field.annotation}
        if isinstance(value, bool) and kinds & {int, float} and bool not in kinds:
            return f"{prefix}{key}"
        if found := _boolean_number(value, field.annotation, f"{prefix}{key}."):
            return found
    return None


def parse_job(data: dict, *, source: str = "job") -> JobConfig:
    if not isinstance(data, dict):
        raise AdarayError(f"{source}: a job file must be a YAML mapping, got {type(data).__name__}")
    if where := _boolean_number(data, JobConfig):
        raise AdarayError(f"{source}: {where}: expected a number, got a boolean (true/false)")
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise AdarayError(_one_line(exc, source)) from None
    except (TypeError, ValueError) as exc:  # dataclass configs raise these from __post_init__
        raise AdarayError(f"{source}: {exc}") from None


def load_job(path: str | Path) -> JobConfig:
    """Read and validate a job file; every problem is a one-line AdarayError."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.y*ml"))
        raise AdarayError(f"{path} is a folder; give a job YAML file" +
                          (f", e.g. {path / inside[0]} (it holds {', '.join(inside)})" if inside else ""))
    if not path.is_file():
        raise AdarayError(f"job file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise AdarayError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    job = parse_job(data, source=str(path))
    # Relative workspaces and data paths are relative to the job file, not the shell's cwd.
    return resolve_paths(job, base=path.parent)


def resolve_paths(job: JobConfig, *, base: Path) -> JobConfig:
    def rel(p: str | None) -> str | None:
        if p is None or "://" in p or Path(p).expanduser().is_absolute():
            return p
        return str((base / p).resolve())

    task = job.task.model_copy(
        update={"path": rel(job.task.path), "files": {k: rel(v) for k, v in job.task.files.items()}
                if job.task.files else None, "unlabelled": rel(job.task.unlabelled)}
    )
    teacher = job.teacher
    if teacher.model != "minilm" and (base / teacher.model).exists():
        teacher = teacher.model_copy(update={"model": rel(teacher.model)})
    # The workspace stays relative to the current directory, like git's or MLflow's folders.
    return job.model_copy(update={"task": task, "teacher": teacher})


def dump_job(job: JobConfig) -> str:
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
