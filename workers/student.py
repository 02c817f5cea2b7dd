"""A derived student on disk: save/load (config.json + model.safetensors + tokenizer) and predict.

The file I/O lives here, at the edge, so search_space/ stays pure torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from search_space.layers import ProbedStack
from search_space.student import student_from_config
from workers.dataset import pad_id_lists, tokenize_ids
from workers.student_files import (
    BACK_DIR,
    CONFIG_FILE,
    FRONT_DIR,
    ONNX_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    is_cascade_student,
    is_onnx_student,
)


def save_student(model: ProbedStack, folder: str | Path, *, tokenizer_dir: str | Path, extra: dict[str, Any]) -> Path:
    """Write config.json (architecture + `extra`), the weights and the tokenizer's files.

    Writes into `folder` directly; callers wanting an atomic folder write to a temp one first.
    """
    from transformers import AutoTokenizer  # heavy (about 1 s): kept off the predict path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clash = sorted(set(extra) & set(model.config_dict()))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the architecture config")
    (folder / CONFIG_FILE).write_text(json.dumps({**model.config_dict(), **extra}, indent=2))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(folder))
    return folder


def load_student(folder: str | Path) -> ProbedStack:
    """The torch module of a saved student (a `pull`ed or retrained folder), in eval mode."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if is_onnx_student(folder):
        raise ValueError(f"{folder} holds a student exported for onnxruntime ({ONNX_FILE}), not torch weights: "
                         "serve it with `adaray predict`, or pull the version it was exported from")
    if is_cascade_student(folder):
        raise ValueError(f"{folder} holds a cascade of two students ({FRONT_DIR}/ and {BACK_DIR}/), not torch weights: "
                         f"serve it with `adaray predict`, or name {folder / FRONT_DIR} or {folder / BACK_DIR} alone")
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(f"{folder} is not a saved student (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    model = student_from_config(json.loads(config_path.read_text()))
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval()


class StudentPredictor:
    """A saved student with its tokenizer and label names: texts in, labels and probabilities out.
    `model` is the torch student, an exported one run by onnxruntime (`OnnxStudent`), or a cascade of two
    (`workers.cascade.CascadeModel`)."""

    def __init__(self, model, *, tokenizer, label_names: list[str], pair: bool, max_length: int,
                 exit_threshold: float = 0.0) -> None:
        self.model = model.eval() if isinstance(model, ProbedStack) else model
        self.tokenizer = tokenizer
        self.label_names, self.pair, self.max_length = list(label_names), pair, max_length
        self.exit_threshold = exit_threshold  # the default; 0 runs every cell

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> StudentPredictor:
        folder = Path(folder)
        if is_cascade_student(folder):
            from workers.cascade_student import load_cascade

            model, config = load_cascade(folder), json.loads((folder / CONFIG_FILE).read_text())
        elif is_onnx_student(folder):
            from workers.onnx_export import OnnxStudent  # onnxruntime, only for a student that needs it

            config = json.loads((folder / CONFIG_FILE).read_text())
            model = OnnxStudent(folder / ONNX_FILE, pad_id=config["pad_id"])
        else:
            model = load_student(folder)  # checks the folder holds a student, before its config is read
            config = json.loads((folder / CONFIG_FILE).read_text())
        missing = [k for k in ("label_names", "pair", "max_length") if k not in config]
        if missing:
            raise ValueError(f"{folder / CONFIG_FILE} lacks {missing}: not saved by adaray's retrain")
        if not (folder / TOKENIZER_FILE).is_file():
            raise ValueError(f"{folder} lacks {TOKENIZER_FILE}: save the student with adaray's retrain or pull")
        # The fast tokenizer's own file, read without transformers; encode_texts drives it as prepare does.
        return cls(model, tokenizer=Tokenizer.from_file(str(folder / TOKENIZER_FILE)), label_names=config["label_names"],
                   pair=config["pair"], max_length=config["max_length"],
                   exit_threshold=config.get("exit_threshold", 0.0))

    def predict(
        self, texts: list[str], text_pairs: list[str] | None = None, *, batch_size: int = 64,
        exit_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """One {"label": name, "probabilities": {name: p}} per text (pair). `exit_threshold`: stop a
        text after the first cell this sure of it (normalised entropy below it; 0 runs every cell);
        None takes the student's default, chosen on dev at retrain."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        if self.pair != (text_pairs is not None):
            raise ValueError("this student classifies text pairs: give text_pairs" if self.pair
                             else "this student classifies single texts: do not give text_pairs")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(text_pairs)} text_pairs")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        threshold = self.exit_threshold if exit_threshold is None else float(exit_threshold)
        if not 0 <= threshold <= 1:
            raise ValueError(f"exit_threshold must lie in [0, 1] (a normalised entropy), got {threshold}")
        if threshold > 0 and not isinstance(self.model, ProbedStack):
            raise ValueError("this student is an ONNX graph or a cascade, which runs whole models: early exit needs "
                             "a torch student (or exit_threshold 0)")
        results = []
        for start in range(0, len(texts), batch_size):
            chunk_b = None if text_pairs is None else text_pairs[start:start + batch_size]
            probs = self._probabilities(texts[start:start + batch_size], chunk_b, threshold=threshold)  # (B, C)
            for row in probs.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                results.append({"label": self.label_names[best],
                                "probabilities": dict(zip(self.label_names, row, strict=True))})
        return results

    def _probabilities(self, texts_a: list[str], texts_b: list[str] | None, *, threshold: float) -> torch.Tensor:
        ids_a, ids_b = tokenize_ids(self.tokenizer, texts_a, texts_b, max_length=self.max_length)
        inputs = [*self._padded(ids_a), *(self._padded(ids_b) if ids_b is not None else ())]
        with torch.inference_mode():
            if threshold > 0:
                return self.model.early_exit(*inputs, threshold=threshold)[0].softmax(dim=-1)
            return self.model(*inputs).logits.softmax(dim=-1)

    def _padded(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        padded, lengths = pad_id_lists(pa.array(ids, pa.list_(pa.int32())), pad_id=self.model.pad_id)
        ids_t = torch.from_numpy(padded).long()  # (B, T)
        mask = torch.arange(ids_t.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]  # (B, T)
        return ids_t, mask
