"""Tiny job files for the integration tests: a small slice of real data, tiny models."""

from __future__ import annotations


def tiny_job(workspace, *, name="e2e", **overrides) -> dict:
    job = {
        "name": name,
        "workspace": str(workspace),
        "task": {"builtin": "rotten_tomatoes", "max_examples": 240, "max_length": 32},
        "teacher": {"epochs": 1, "min_steps": 0, "batch_size": 16, "evals_per_epoch": 1, "probe_epochs": 1},
        "cache": {"augment": {"copies": 1}, "shard_size": 128, "batch_size": 32},
        "space": {"embed_dim": 32, "k_max": 2},
        "search": {"epochs": 2, "batch_size": 32},
        "retrain": {"epochs": 1, "min_steps": 0, "batch_size": 32, "latency_repeats": 3},
        "outer_loop": {"rounds": 2, "configs_per_round": 2, "seeds": 2},
        "cluster": {"cpus_per_trial": 1, "max_failures": 2},
        # min_steps 0: these jobs test the flow in as few steps as they say.
        # A 240-example slice trains students that sit near the majority class: these jobs test the
        # flow, the majority-class gate has its own test (tests/test_data.py).
        "budget": {"register_top": 2, "min_over_majority": -1.0},
    }
    for key, value in overrides.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    return job
