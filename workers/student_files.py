"""The files of a student folder, and which kind of student a folder holds. Torch-free, so pull and
the registry can read folders without loading a model."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"  # architecture, task facts, predict's defaults
WEIGHTS_FILE = "model.safetensors"  # a torch student's weights
ONNX_FILE = "model.onnx"  # an exported student (workers/onnx_export.py), in place of the weights
TOKENIZER_FILE = "tokenizer.json"  # written by a fast tokenizer's save_pretrained
METRICS_FILE = "metrics.json"  # what retrain measured (scores, params, FLOPs)
LATENCY_FILE = "latency.json"  # what orchestrator/measure.py timed


def is_onnx_student(folder: str | Path) -> bool:
    """Whether `folder` holds an exported student (model.onnx) rather than torch weights."""
    folder = Path(folder)
    return (folder / ONNX_FILE).is_file() and not (folder / WEIGHTS_FILE).is_file()


def is_student_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a student adaray can load: its config and torch weights or an ONNX graph."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and ((folder / WEIGHTS_FILE).is_file() or is_onnx_student(folder))
