"""A cascade on disk: one student folder holding a front and a back student folder, the threshold between
them in its config.json, its scores in metrics.json. `StudentPredictor`, predict, pull and the registry
serve it as they serve any student.

The threshold is the front's top-class probability at the `defer` quantile of search_valid
(`workers.cascade.defer_threshold`): a split nothing is scored on, so the share deferred is set by what the
job's budget lets it cost, never tuned on dev. Scores are the cascade's as served: `predict`'s batches.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from workers.cascade import CascadeModel, cascade_logits, defer_threshold
from workers.dataset import load_split, read_meta
from workers.local_files import publish_dir
from workers.metrics import classification_scores, split_scores
from workers.student_files import BACK_DIR, CASCADE_KEY, CONFIG_FILE, FRONT_DIR, METRICS_FILE, TOKENIZER_FILE

SERVED_BATCH = 64  # predict's default batch: an int8 graph's answer can depend on the rows batched with it
_SERVING_KEYS = ("label_names", "pair", "max_length", "pad_id", "vocab_size")  # what predict and timing read


def load_model(folder: str | Path):
    """The model of any student folder: the torch student, an `OnnxStudent`, or a `CascadeModel`."""
    from workers.student import StudentPredictor

    return StudentPredictor.from_pretrained(folder).model


def load_cascade(folder: str | Path) -> CascadeModel:
    folder = Path(folder)
    threshold = json.loads((folder / CONFIG_FILE).read_text())[CASCADE_KEY]["threshold"]
    return CascadeModel(load_model(folder / FRONT_DIR), load_model(folder / BACK_DIR), threshold=threshold)


def check_pairable(front_dir: Path, back_dir: Path) -> None:
    """ValueError unless the two students read the same inputs and answer in the same labels."""
    front, back = (json.loads((d / CONFIG_FILE).read_text()) for d in (front_dir, back_dir))
    for key in ("label_names", "pair", "max_length"):
        if front.get(key) != back.get(key):
            raise ValueError(f"{front_dir} has {key} {front.get(key)!r}, {back_dir} {back.get(key)!r}: a cascade's "
                             "students must be of one task")
    if (front_dir / TOKENIZER_FILE).read_bytes() != (back_dir / TOKENIZER_FILE).read_bytes():
        raise ValueError(f"{front_dir} and {back_dir} have different tokenizers: a cascade's students must read "
                         "the same ids")


_INPUTS = ("ids_a", "mask_a", "ids_b", "mask_b")


@torch.inference_mode()
def _probabilities(model, split) -> torch.Tensor:  # (N, C)
    return torch.cat([model(*(b.get(k) for k in _INPUTS)).logits.softmax(-1)
                      for b in split.batches(batch_size=SERVED_BATCH)])


@torch.inference_mode()
def _served(front, back, split, *, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cascade's classes (N,) and which rows it deferred (N,) bool, in predict's batches: one front pass."""
    routed = [cascade_logits(lambda *x: front(*x).logits, lambda *x: back(*x).logits,
                             *(b.get(k) for k in _INPUTS), threshold=threshold)
              for b in split.batches(batch_size=SERVED_BATCH)]
    return torch.cat([logits.argmax(-1) for logits, _ in routed]), torch.cat([d for _, d in routed])


def make_cascade(front_dir: str | Path, back_dir: str | Path, out_dir: str | Path, *, defer: float,
                 prepared_dir: str | Path) -> dict[str, Any]:
    """Write the cascade of `front_dir` then `back_dir`, deferring a `defer` share of search_valid's texts, into
    `out_dir` in one rename, scored on dev and test; returns its metrics. A folder already there is kept."""
    out_dir, front_dir, back_dir = Path(out_dir), Path(front_dir), Path(back_dir)
    if (out_dir / METRICS_FILE).is_file():
        return json.loads((out_dir / METRICS_FILE).read_text())
    check_pairable(front_dir, back_dir)
    meta = read_meta(prepared_dir)
    started = time.perf_counter()
    front = load_model(front_dir)
    threshold = defer_threshold(_probabilities(front, load_split(prepared_dir, "search_valid")), defer=defer)
    back = load_model(back_dir)
    scores = {}
    for name in ("dev", "test"):
        split = load_split(prepared_dir, name)
        classes, deferred = _served(front, back, split, threshold=threshold)
        got = classification_scores(classes, split.labels, num_labels=meta.num_labels)
        scores |= split_scores(name, got, metric=meta.metric) | {f"deferred_{name}": float(deferred.float().mean())}
    parts = {part: json.loads((d / METRICS_FILE).read_text()) for part, d in ((FRONT_DIR, front_dir), (BACK_DIR, back_dir))}
    front_config = json.loads((front_dir / CONFIG_FILE).read_text())
    config = {**{k: front_config[k] for k in _SERVING_KEYS if k in front_config}, "exit_threshold": 0.0,
              CASCADE_KEY: {"threshold": threshold, "defer": defer, "front": front_dir.name, "back": back_dir.name}}
    metrics = {**scores, "metric": meta.metric, "defer": defer, "threshold": threshold,
               "params": parts[FRONT_DIR]["params"] + parts[BACK_DIR]["params"],  # both are loaded to serve it
               "front": front_dir.name, "back": back_dir.name,
               "front_dev_metric": parts[FRONT_DIR]["dev_metric"], "back_dev_metric": parts[BACK_DIR]["dev_metric"],
               "build_seconds": time.perf_counter() - started}

    def write(folder: Path) -> None:
        for part, d in ((FRONT_DIR, front_dir), (BACK_DIR, back_dir)):
            shutil.copytree(d, folder / part, ignore=shutil.ignore_patterns(".*"))
        shutil.copy2(front_dir / TOKENIZER_FILE, folder / TOKENIZER_FILE)  # the one both read (check_pairable)
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    publish_dir(out_dir, write)
    return json.loads((out_dir / METRICS_FILE).read_text())
