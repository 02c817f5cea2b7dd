"""The files of a student folder, and which kind of student a folder holds. Torch-free, so pull and
the registry can read folders without loading a model."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "config.json"  # architecture, task facts, predict's defaults
WEIGHTS_FILE = "model.safetensors"  # a torch student's weights
ONNX_FILE = "model.onnx"  # an exported student (workers/onnx_export.py), in place of the weights
TOKENIZER_FILE = "tokenizer.json"  # written by a fast tokenizer's save_pretrained
METRICS_FILE = "metrics.json"  # what retrain measured (scores, params, FLOPs)
LATENCY_FILE = "latency.json"  # what orchestrator/measure.py timed
CASCADE_KEY = "cascade"  # config.json of a cascade (workers/cascade_student.py): threshold, share deferred
FRONT_DIR, BACK_DIR = "front", "back"  # a cascade's two students, each a student folder of its own


def is_onnx_student(folder: str | Path) -> bool:
    """Whether `folder` holds an exported student (model.onnx) rather than torch weights."""
    folder = Path(folder)
    return (folder / ONNX_FILE).is_file() and not (folder / WEIGHTS_FILE).is_file()


def is_cascade_student(folder: str | Path) -> bool:
    """Whether `folder` holds a cascade: a config of its own and its front and back students."""
    folder = Path(folder)
    if not ((folder / CONFIG_FILE).is_file() and all(is_student_folder(folder / part) for part in (FRONT_DIR, BACK_DIR))):
        return False
    try:
        return CASCADE_KEY in json.loads((folder / CONFIG_FILE).read_text())
    except ValueError:  # a config.json that is not JSON: not a cascade adaray wrote
        return False


def is_student_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a student adaray can load: its config and torch weights, an ONNX graph, or a
    cascade of two such students."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and ((folder / WEIGHTS_FILE).is_file() or is_onnx_student(folder)
                                                 or is_cascade_student(folder))
