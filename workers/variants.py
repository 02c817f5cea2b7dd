"""A retrained student's serving variants: the same student exported for onnxruntime (fp32 or
int8), scored on the prepared dev and test splits, in a folder that predict, pull and the registry
serve like any student's.

A variant is a student of its own on the Pareto front: its scores are onnxruntime's predictions
(int8 rounding moves a few), its latency is onnxruntime's (orchestrator/measure.py), and its
parameters are its parent's (int8 stores them in a quarter of the bytes; `file_mb` says so).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from workers.config import Variant
from workers.dataset import load_split, read_meta
from workers.local_files import publish_dir
from workers.metrics import classification_scores, split_scores
from workers.onnx_export import EXPORT_REPORT, ONNX_FILE, export_onnx, onnx_predictions
from workers.student_files import CONFIG_FILE, METRICS_FILE

VARIANTS: dict[Variant, bool] = {"onnx": False, "onnx-int8": True}  # name -> int8 weights
# A parent's figures that do not hold for its export: early exit needs the probes a graph does not
# return, and the training's cost was the parent's (counting it twice would inflate a job's compute).
_NOT_INHERITED = ("exit_curve", "exit_threshold", "exit_mean_cells", "dev_metric_full_vocab", "test_metric_full_vocab",
                  "train_seconds", "cpu_seconds")


def make_variant(student_dir: str | Path, out_dir: str | Path, *, variant: str, prepared_dir: str | Path) -> dict[str, Any]:
    """Export `student_dir` as `variant` (VARIANTS) into `out_dir`, in one rename, with its scores in
    metrics.json; returns those metrics. A folder already there is kept (same key, same content)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    out_dir, student_dir = Path(out_dir), Path(student_dir)
    if (out_dir / METRICS_FILE).is_file():
        return json.loads((out_dir / METRICS_FILE).read_text())
    meta = read_meta(prepared_dir)
    parent = json.loads((student_dir / METRICS_FILE).read_text())

    def write(folder: Path) -> None:
        started = time.perf_counter()
        export_onnx(student_dir, folder, int8=VARIANTS[variant])
        scores = {}
        for name in ("dev", "test"):
            split = load_split(prepared_dir, name)
            got = classification_scores(onnx_predictions(folder / ONNX_FILE, split), split.labels,
                                        num_labels=meta.num_labels)
            scores |= split_scores(name, got, metric=meta.metric)
        config = json.loads((folder / CONFIG_FILE).read_text())
        (folder / CONFIG_FILE).write_text(json.dumps({**config, "exit_threshold": 0.0, "variant": variant}, indent=2))
        report = json.loads((folder / EXPORT_REPORT).read_text())
        metrics = {**{k: v for k, v in parent.items() if k not in _NOT_INHERITED}, **scores, "variant": variant,
                   "parent_dev_metric": parent["dev_metric"], "file_mb": (folder / ONNX_FILE).stat().st_size / 1e6,
                   "max_logit_diff": report.get("int8_max_logit_diff", report["fp32_max_logit_diff"]),
                   "export_seconds": time.perf_counter() - started}
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    publish_dir(out_dir, write)
    return json.loads((out_dir / METRICS_FILE).read_text())
