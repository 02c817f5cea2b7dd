"""The Ray Tune adapter of a search: the only caller of `tune.report` and of Tune checkpoints."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from search_space.config import SearchSpaceConfig
from workers.config import SearchConfig
from workers.search import run_search
from workers.search_data import load_search_data
from workers.search_state import STATE_FILE


def search_trainable(config: dict[str, Any]) -> None:
    """One search, a metrics report and checkpoint per epoch; resumes from Tune's checkpoint.

    config: "space" (dict), "search" (SearchConfig fields), "cache_uri", "prepared_dir",
    "teacher_dir", "max_train_examples"; other keys (trial bookkeeping) are ignored.
    """
    from ray import tune  # here, not at the top: the local `adaray search` never pays for importing Tune

    space = SearchSpaceConfig.from_dict(config["space"])
    cfg = SearchConfig(**config["search"])
    data = load_search_data(cache_uri=config["cache_uri"], prepared_dir=config["prepared_dir"],
                            teacher_dir=config.get("teacher_dir"), max_train_examples=config.get("max_train_examples"))
    resume = None
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="adaray-search-") as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    run_search(space=space, cfg=cfg, data=data, report=report, resume=resume)
