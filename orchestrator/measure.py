"""Latency of the retrained students and of the teacher, measured on the driver one model at a time.

Measuring here, after training, keeps every timing free of other work on the same CPU. Every
model is timed by `workers.latency.latency_metrics` at the task's max_length with the same plan
and thread count. Results are cached next to what they measure (keyed by the hardware, threads,
length and plan), so a resumed job reuses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from workers.latency import hardware_name, latency_metrics
from workers.local_files import write_json_atomic


def _timed(path: Path, load: Callable[[], nn.Module], *, seq_len: int, repeats: int, threads: int | None) -> dict:
    setting = {"hardware": hardware_name("cpu"), "seq_len": seq_len, "repeats": repeats, "threads_asked": threads}
    if path.is_file():
        found = json.loads(path.read_text())
        if found.get("setting") == setting:
            return found
    model = load()
    result = {**latency_metrics(model, seq_len=seq_len, repeats=repeats, threads=threads),
              "params": sum(p.numel() for p in model.parameters()), "setting": setting}
    write_json_atomic(path, result)
    return result


def student_latency(student_dir: Path, *, seq_len: int, repeats: int, threads: int | None = None) -> dict:
    """latency_b{1,128}_ms (+ _p95_ms), hardware, threads and params of a saved student."""
    from workers.student import load_student

    return _timed(Path(student_dir) / "latency.json", lambda: load_student(student_dir), seq_len=seq_len,
                  repeats=repeats, threads=threads)


def teacher_latency(teacher_dir: Path, *, seq_len: int, cache_dir: Path, repeats: int,
                    threads: int | None = None) -> dict:
    """The same figures for the teacher as deployed (its sequence-classification model)."""

    def load() -> nn.Module:
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return AutoModelForSequenceClassification.from_pretrained(teacher_dir)

    return _timed(Path(cache_dir) / f"teacher-latency-{Path(teacher_dir).name}.json", load, seq_len=seq_len,
                  repeats=repeats, threads=threads)
