"""Measured latency: the one timing function of the project, for students, teachers and single ops.

Latency is wall-clock per forward call after warm-up calls, reported as median and p95
milliseconds over the timed calls, with torch's thread count pinned for the measurement and
recorded with the hardware. Every model compared is timed at the same sequence length with the
same plan (`timing_plan`), so ratios between them mean what they say.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search_space.config import SearchSpaceConfig
from search_space.layers import ProbedStack
from search_space.ops import OPS
from workers.local_files import write_json_atomic

LATENCY_TABLE_FORMAT = 1


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":  # accelerators run asynchronously
        torch.accelerator.synchronize(device)


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op threads set to `threads` (None: as they are) inside; yields the count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


B128_MAX_CALLS = 10  # 1,280 texts: more than a pass over a small dev split
WARMUP_CALLS = {1: 5, 128: 2}  # untimed calls at each batch size before each block's timed ones


def timing_plan(repeats: int) -> dict[int, tuple[int, int]]:
    """{batch: (warm-up calls, timed calls)} for batch 1 and 128, the same for every model compared.

    Batch 128 takes a third of the calls, at least 5 (so its p95 is not its maximum) and at most
    B128_MAX_CALLS: a call there already averages 128 texts, so a cascade's cost varying from text to text
    asks for many calls at batch 1 only (the cascades' 150 gave batch 128 50, and the teacher timed beside
    them spent 96 s there, of a demo's 6-minute finish on the AMD EPYC)."""
    return {1: (WARMUP_CALLS[1], repeats), 128: (WARMUP_CALLS[128], min(B128_MAX_CALLS, max(5, repeats // 3)))}


def _call_times(fn: Callable[[], Any], *, device: torch.device, calls: int, warmup: int) -> list[float]:
    """Milliseconds of each of `calls` calls of `fn()` after `warmup` untimed ones."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _synchronize(device)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            _synchronize(device)
            times.append(1000.0 * (time.perf_counter() - start))
    return times


def _summary(times: list[float]) -> dict[str, float]:
    # The mean is what a stream pays when calls differ in cost (a cascade defers some texts); the median
    # and p95 are what one call costs.
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(np.mean(times))}


def time_callable(
    fn: Callable[[], Any], *, device: torch.device | str = "cpu", repeats: int = 30, warmup: int = 5
) -> dict[str, float]:
    """Median and p95 milliseconds of `fn()` over `repeats` calls after `warmup` untimed ones."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    return _summary(_call_times(fn, device=torch.device(device), calls=repeats, warmup=warmup))


def example_inputs(model: nn.Module, *, batch_size: int, seq_len: int, device: torch.device | str) -> dict:
    """Random full-length inputs for a student or a Hugging Face encoder (keyword arguments)."""
    gen = torch.Generator().manual_seed(0)
    if isinstance(model, ProbedStack):
        # The same length as the teacher's inputs (a student's real inputs are 2 tokens shorter: no
        # [CLS]/[SEP]), so every model compared does the same amount of work per example.
        ids = torch.randint(1, model.vocab_size, (batch_size, seq_len), generator=gen)  # (B, T)
        return {"ids_a": ids.to(device), "mask_a": torch.ones_like(ids, dtype=torch.bool).to(device)}
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "vocab_size"):
        raise ValueError(f"cannot build inputs for {type(model).__name__}: use time_callable with your own")
    ids = torch.randint(1, config.vocab_size, (batch_size, seq_len), generator=gen)  # (B, T)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "type_vocab_size", 0):
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return {k: v.to(device) for k, v in inputs.items()}


def hardware_name(device: torch.device | str = "cpu") -> str:
    """The CPU model (with its family and model numbers where /proc/cpuinfo has them), torch's kernel ISA
    and its thread count (`AMD EPYC 25/1, AVX2 (2 threads)`), or the accelerator's name. Each part moves
    the figures: one job on two EPYCs ("AMD EPYC" both) can train teachers that differ in their last bits, the
    search amplifies them, and the timings differ (docs/experiments.md, "A slower EPYC")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:  # "AMD EPYC" alone names Milan and Genoa alike
        name += f" {fields['cpu family']}/{fields['model']}"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()} ({torch.get_num_threads()} threads)"


def write_latency_table(
    path: str | Path, *, latency_ms: dict[str, float], hardware: str, embed_dim: int, seq_len: int, batch_size: int
) -> Path:
    """The per-op table that `cost_source: latency` reads, written atomically as JSON."""
    doc = {"format": LATENCY_TABLE_FORMAT, "hardware": hardware, "embed_dim": embed_dim, "seq_len": seq_len,
           "batch_size": batch_size, "latency_ms": latency_ms}
    return write_json_atomic(path, doc)


def read_latency_table(path: str | Path, *, primitives: tuple[str, ...], embed_dim: int) -> dict[str, float]:
    """Op -> milliseconds from a table by `write_latency_table`; ValueError if it does not fit the space."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"latency table not found: {path} (make one with `adaray latency-table`)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"latency table {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("latency_ms"), dict):
        raise ValueError(f"latency table {path} has no latency_ms mapping (make one with `adaray latency-table`)")
    if doc.get("embed_dim") != embed_dim:
        raise ValueError(f"latency table {path} was measured at embed_dim {doc.get('embed_dim')}, "
                         f"the search space has {embed_dim}; measure a new one")
    missing = [p for p in primitives if p not in doc["latency_ms"]]
    if missing:
        raise ValueError(f"latency table {path} has no entry for ops {missing}")
    return {p: float(doc["latency_ms"][p]) for p in primitives}


# batch size -> a call of the model on full-length inputs; what the call holds (inputs, a session) is
# made by each call_at(batch) and freed with the call
CallAt = Callable[[int], Callable[[], Any]]


def side_by_side_timings(call_ats: dict[str, CallAt], *, repeats: int, blocks: int = 5,
                         device: torch.device | str = "cpu", prefix: str = "") -> dict[str, dict[str, float]]:
    """`{prefix}latency_b{1,128}_ms` (median), `_p95_ms` and `_mean_ms` of every model, under
    `timing_plan(repeats)`, timed in turns: each batch size's calls are cut into `blocks` blocks, and the
    models take turns a block at a time, each turn starting one model later. A burst of noise on a shared
    machine thus lands on all models alike instead of on whichever was being timed, and their ratios hold.

    Each block starts with the plan's warm-up calls, untimed, so a model does not pay for waking
    the threads the previous one left asleep or spinning."""
    device = torch.device(device)
    names = list(call_ats)
    metrics: dict[str, dict[str, float]] = {name: {} for name in names}
    for batch_size, (warmup, n) in timing_plan(repeats).items():
        times: dict[str, list[float]] = {name: [] for name in names}
        per_block = -(-n // blocks)  # ceil: every model gets at least the plan's calls
        for block in range(blocks):
            for name in names[block % len(names):] + names[: block % len(names)]:
                # Made anew each block and dropped after it: an onnxruntime session left alive keeps
                # its threads spinning beside the next model (p95s of 5-8 ms for 1 ms models here).
                times[name] += _call_times(call_ats[name](batch_size), device=device, calls=per_block,
                                           warmup=warmup)
        for name in names:
            summary = _summary(times[name])
            metrics[name][f"{prefix}latency_b{batch_size}_ms"] = summary["median_ms"]
            metrics[name][f"{prefix}latency_b{batch_size}_p95_ms"] = summary["p95_ms"]
            metrics[name][f"{prefix}latency_b{batch_size}_mean_ms"] = summary["mean_ms"]
    return metrics


def planned_timings(call_at: CallAt, *, repeats: int, device: torch.device | str = "cpu",
                    prefix: str = "") -> dict[str, float]:
    """`side_by_side_timings` of one model: what every runtime (torch, onnxruntime) is timed by."""
    return side_by_side_timings({"model": call_at}, repeats=repeats, blocks=1, device=device,
                                prefix=prefix)["model"]


def torch_call_at(model: nn.Module, *, seq_len: int, device: torch.device | str = "cpu") -> CallAt:
    """Calls of `model` (in eval mode) on `example_inputs` of each batch size."""
    model.eval()

    def call_at(batch_size: int) -> Callable[[], Any]:
        inputs = example_inputs(model, batch_size=batch_size, seq_len=seq_len, device=device)
        return lambda: model(**inputs)

    return call_at


def latency_metrics(model: nn.Module, *, seq_len: int, repeats: int = 30, threads: int | None = None,
                    gpu: bool = True) -> dict[str, Any]:
    """Median and p95 at batch 1 and 128 on CPU (and on CUDA when there is one and `gpu`), with the
    hardware, under `timing_plan(repeats)` and `threads` torch threads.

    Keys: latency_b{1,128}_ms, latency_b{1,128}_p95_ms, hardware, threads, seq_len, runtime, and
    the same latency keys and hardware with a gpu_ prefix on CUDA. The model is back on its
    original device afterwards.
    """
    original = next(model.parameters()).device
    targets = [("", torch.device("cpu"))]
    if gpu and torch.cuda.is_available():
        targets.append(("gpu_", torch.device("cuda")))
    metrics: dict[str, Any] = {}
    was_training = model.training
    model.eval()
    with pinned_threads(threads) as pinned:
        try:
            for prefix, device in targets:
                model.to(device)
                metrics.update(planned_timings(torch_call_at(model, seq_len=seq_len, device=device),
                                               repeats=repeats, device=device, prefix=prefix))
                metrics[f"{prefix}hardware"] = hardware_name(device)
        finally:
            model.to(original)
            model.train(was_training)
    return {**metrics, "threads": pinned, "seq_len": seq_len, "runtime": "torch"}


@torch.no_grad()
def op_latency_table(
    space: SearchSpaceConfig, *, seq_len: int, batch_size: int = 1, device: torch.device | str = "cpu",
    repeats: int = 30, warmup: int = 5,
) -> dict[str, float]:
    """Median milliseconds per call of each op in `space.primitives` at width embed_dim (for
    `search.cost_source: latency`), timed by `time_callable` like every model."""
    device = torch.device(device)
    # Measuring must not shift the caller's global RNG stream (op init draws from it).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ops = {name: OPS[name](space.embed_dim).to(device).eval() for name in space.primitives}
        x = torch.randn(batch_size, seq_len, space.embed_dim).to(device)  # (B, T, D)
    mask = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)  # (B, T)
    return {name: time_callable(lambda op=op: op(x, mask), device=device, repeats=repeats, warmup=warmup)["median_ms"]
            for name, op in ops.items()}
