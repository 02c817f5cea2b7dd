"""A search's resumable state: everything `run_search` needs to carry on after a reported epoch."""

from __future__ import annotations

from typing import Any

import torch

from search_space.config import SearchSpaceConfig
from search_space.supernet import Supernet
from workers.config import SearchConfig

STATE_FORMAT = 2
STATE_FILE = "search_state.pt"


def _cpu_copy(obj: Any) -> Any:
    """A detached CPU copy of nested dicts/lists of tensors: a snapshot later steps cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def snapshot(
    *, space: SearchSpaceConfig, cfg: SearchConfig, model: Supernet, opt_weights: torch.optim.Optimizer,
    opt_arch: torch.optim.Optimizer, gumbel: torch.Generator, epoch: int, step: int, history: list[dict],
) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "space": space.to_dict(),
        "search": cfg.model_dump(mode="json"),
        "epoch": epoch,
        "step": step,
        "model": _cpu_copy(model.state_dict()),
        "opt_weights": _cpu_copy(opt_weights.state_dict()),
        "opt_arch": _cpu_copy(opt_arch.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "gumbel_rng": gumbel.get_state(),
        "history": [dict(m) for m in history],
    }


def restore(
    state: dict[str, Any], *, space: SearchSpaceConfig, cfg: SearchConfig, model: Supernet,
    opt_weights: torch.optim.Optimizer, opt_arch: torch.optim.Optimizer, gumbel: torch.Generator, device: torch.device,
) -> tuple[int, int, list[dict]]:
    """(epoch, step, history) of the snapshot, after loading it into the model, optimisers and RNGs."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"resume state has format {state.get('format')!r}, expected {STATE_FORMAT}")
    if state["space"] != space.to_dict() or state["search"] != cfg.model_dump(mode="json"):
        raise ValueError("resume state comes from a search with another space or search config")
    model.load_state_dict(state["model"])
    opt_weights.load_state_dict(state["opt_weights"])
    opt_arch.load_state_dict(state["opt_arch"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    gumbel.set_state(state["gumbel_rng"])
    return int(state["epoch"]), int(state["step"]), [dict(m) for m in state["history"]]
