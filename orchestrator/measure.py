"""Latency of the retrained students and of the teacher, measured on the driver one model at a time.

Measuring here, after training, keeps every timing free of other work on the same CPU. Results
are cached next to what they measure (keyed by the hardware), so a resumed job reuses them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from workers.latency import hardware_name, latency_metrics


def _cached(path: Path, compute) -> dict:
    hardware = hardware_name("cpu")
    if path.is_file():
        found = json.loads(path.read_text())
        if found.get("hardware") == hardware:
            return found
    result = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    return result


def student_latency(student_dir: Path, *, seq_len: int, repeats: int) -> dict:
    """latency_b{1,128}_ms (+ _p95_ms), hardware and params of a saved student."""
    from workers.student import Student

    def compute() -> dict:
        model = Student.from_pretrained(student_dir)
        return {**latency_metrics(model, seq_len=seq_len, repeats=repeats),
                "params": sum(p.numel() for p in model.parameters())}

    return _cached(Path(student_dir) / "latency.json", compute)


def teacher_latency(teacher_dir: Path, *, seq_len: int, cache_dir: Path, repeats: int = 10) -> dict:
    """The same figures for the teacher as deployed (its sequence-classification model)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    def compute() -> dict:
        hf_logging.disable_progress_bar()
        model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
        with torch.inference_mode():
            return {**latency_metrics(model, seq_len=seq_len, repeats=repeats, warmup=2),
                    "params": sum(p.numel() for p in model.parameters())}

    cache_dir.mkdir(parents=True, exist_ok=True)
    return _cached(cache_dir / f"teacher-latency-{Path(teacher_dir).name}.json", compute)
