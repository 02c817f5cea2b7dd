"""Latency of the retrained students and of the teacher, measured on the driver one model at a time.

Measuring here, after training, keeps every timing free of other work on the same CPU. Every
model is timed at the task's max_length with the same plan and thread count: by
`workers.latency.latency_metrics` under torch, by `onnx_latency_metrics` for an exported variant.
Results are cached next to what they measure (keyed by the hardware, threads, length and plan),
so a resumed job reuses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from workers.latency import hardware_name, latency_metrics
from workers.local_files import write_json_atomic
from workers.student_files import CONFIG_FILE, LATENCY_FILE, METRICS_FILE, ONNX_FILE, is_onnx_student


def _timed(path: Path, measure: Callable[[], dict], *, seq_len: int, repeats: int, threads: int | None) -> dict:
    """`measure()`'s figures, or those stored at `path` when they were taken in the same setting."""
    setting = {"hardware": hardware_name("cpu"), "seq_len": seq_len, "repeats": repeats, "threads_asked": threads}
    if path.is_file():
        found = json.loads(path.read_text())
        if found.get("setting") == setting:
            return found
    result = {**measure(), "setting": setting}
    write_json_atomic(path, result)
    return result


def _torch_figures(model: nn.Module, *, seq_len: int, repeats: int, threads: int | None) -> dict:
    return {**latency_metrics(model, seq_len=seq_len, repeats=repeats, threads=threads),
            "params": sum(p.numel() for p in model.parameters())}


def student_latency(student_dir: Path, *, seq_len: int, repeats: int, threads: int | None = None) -> dict:
    """latency_b{1,128}_ms (+ _p95_ms), hardware, threads, runtime and params of a saved student:
    torch's timing, or onnxruntime's for an exported one (the same plan, length and threads)."""
    student_dir = Path(student_dir)

    def measure() -> dict:
        if not is_onnx_student(student_dir):
            from workers.student import load_student

            return _torch_figures(load_student(student_dir), seq_len=seq_len, repeats=repeats, threads=threads)
        from workers.onnx_export import onnx_latency_metrics

        config = json.loads((student_dir / CONFIG_FILE).read_text())
        metrics = json.loads((student_dir / METRICS_FILE).read_text())  # params: the parent's, as exported
        return {**onnx_latency_metrics(student_dir / ONNX_FILE, vocab_size=config["vocab_size"], seq_len=seq_len,
                                       pair=bool(config.get("pair")), repeats=repeats, threads=threads),
                "params": metrics["params"]}

    return _timed(student_dir / LATENCY_FILE, measure, seq_len=seq_len, repeats=repeats, threads=threads)


def teacher_latency(teacher_dir: Path, *, seq_len: int, cache_dir: Path, repeats: int,
                    threads: int | None = None) -> dict:
    """The same figures for the teacher as deployed (its sequence-classification model)."""

    def load() -> nn.Module:
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return AutoModelForSequenceClassification.from_pretrained(teacher_dir)

    return _timed(Path(cache_dir) / f"teacher-latency-{Path(teacher_dir).name}.json",
                  lambda: _torch_figures(load(), seq_len=seq_len, repeats=repeats, threads=threads), seq_len=seq_len,
                  repeats=repeats, threads=threads)
