"""Latency of the retrained students and of the teacher, measured on the driver side by side.

Measuring here, after training (and with the job's local Ray stopped), keeps every timing free of
other work on the same CPU; and in a fresh process, so nothing the driver holds after a job (threads,
pools, memory) runs beside them. (One fresh-clone demo's driver timed its int8 member at 2.07 ms and
the teacher at 20.5 ms at batch 1; a fresh process right after, 1.04 and 14.8 ms. A quick job's
driver showed no such gap, so the cause is not settled.) Every
model is timed at the task's max_length with the same plan and thread count, torch students and
the teacher under torch, exported variants under onnxruntime, and all of them in turns
(`workers.latency.side_by_side_timings`): on a shared machine a burst of noise then lands on every
model alike, so the budget's pick and the speed-ups do not hang on which model it hit.
Results are cached next to what they measure (keyed by the hardware, threads, length and plan),
so a resumed job reuses them.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.errors import AdarayError
from workers.latency import (
    WARMUP_CALLS,
    CallAt,
    hardware_name,
    pinned_threads,
    side_by_side_timings,
    torch_call_at,
)
from workers.local_files import write_json_atomic
from workers.student_files import CONFIG_FILE, LATENCY_FILE, METRICS_FILE, ONNX_FILE, is_onnx_student


@dataclass(frozen=True)
class Timeable:
    """A model to time: where its figures are cached, and how to load it on `threads` threads as
    calls by batch size plus the figures that are not timings (params, runtime). `load` runs in the
    timing process, so it must pickle: a module-level function or a partial of one."""

    cache: Path
    load: Callable[[int], tuple[CallAt, dict]]
    shared_pool: bool = False  # its graphs share one onnxruntime pool: then every graph of the timing does


def time_models(models: dict[str, Timeable], *, seq_len: int, repeats: int,
                threads: int | None = None) -> dict[str, dict]:
    """latency_b{1,128}_ms (+ _p95_ms), hardware, threads, seq_len, runtime and params of each model:
    the cached figures of those timed before in the same setting, the others timed side by side now
    (`timed_beside`: how many models shared the turns)."""
    setting = {"hardware": hardware_name("cpu"), "seq_len": seq_len, "repeats": repeats, "threads_asked": threads,
               "summary": "mean"}  # the budget reads the mean per call (figures before it lack the key)
    figures, todo = {}, {}
    for name, model in models.items():
        found = json.loads(model.cache.read_text()) if model.cache.is_file() else {}
        if found.get("setting") == setting:
            figures[name] = found
        else:
            todo[name] = model
    if not todo:
        return figures
    # A spawned process: none of the driver's threads, pools or memory; `load`s are picklable partials.
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            timed = pool.submit(_time_side_by_side, {name: model.load for name, model in todo.items()},
                                repeats=repeats, threads=threads if threads is not None else torch.get_num_threads(),
                                shared_pool=any(model.shared_pool for model in todo.values())).result()
    except BrokenProcessPool as exc:  # spawn re-imports the caller's script: one that runs a job at import runs it again
        raise AdarayError("the timing process died: killed, out of memory, or started from a script that runs adaray "
                          "at import; put that script's calls under `if __name__ == \"__main__\":`") from exc
    for name, model in todo.items():
        figures[name] = {**timed[name], "seq_len": seq_len, "timed_beside": len(todo), "setting": setting}
        write_json_atomic(model.cache, figures[name])
    return figures


def _time_side_by_side(loads: dict[str, Callable[[int], tuple[CallAt, dict]]], *, repeats: int,
                       threads: int, shared_pool: bool = False) -> dict[str, dict]:
    """In the timing process: load every model on `threads` threads and time them in turns; with
    `shared_pool`, every onnxruntime graph on one pool of `threads`, as a cascade's two graphs must run."""
    if shared_pool:
        from workers.onnx_export import share_thread_pool

        share_thread_pool(threads)
    with pinned_threads(threads) as pinned:
        loaded = {name: load(pinned) for name, load in loads.items()}
        timings = side_by_side_timings({name: call_at for name, (call_at, _) in loaded.items()}, repeats=repeats)
        hardware = hardware_name("cpu")
    return {name: {**timings[name], **loaded[name][1], "hardware": hardware, "threads": pinned} for name in loads}


def _torch_model(model: nn.Module, *, seq_len: int) -> tuple[CallAt, dict]:
    return torch_call_at(model, seq_len=seq_len), {"params": sum(p.numel() for p in model.parameters()),
                                                    "runtime": "torch"}


def _load_student(student_dir: Path, seq_len: int, threads: int) -> tuple[CallAt, dict]:
    if not is_onnx_student(student_dir):
        from workers.student import load_student

        return _torch_model(load_student(student_dir), seq_len=seq_len)
    from workers.onnx_export import onnx_call_at

    config = json.loads((student_dir / CONFIG_FILE).read_text())
    metrics = json.loads((student_dir / METRICS_FILE).read_text())  # params: the parent's, as exported
    call_at = onnx_call_at(student_dir / ONNX_FILE, vocab_size=config["vocab_size"], seq_len=seq_len,
                           pair=bool(config.get("pair")), threads=threads)
    return call_at, {"params": metrics["params"], "runtime": "onnxruntime"}


def student_timeable(student_dir: Path, *, seq_len: int) -> Timeable:
    """A saved student: under torch, or under onnxruntime for an exported one."""
    student_dir = Path(student_dir)
    return Timeable(student_dir / LATENCY_FILE, partial(_load_student, student_dir, seq_len))


def _load_cascade(cascade_dir: Path, prepared_dir: Path, seq_len: int, threads: int) -> tuple[CallAt, dict]:
    from workers.cascade_student import load_cascade
    from workers.dataset import load_split

    dev = load_split(prepared_dir, "dev")
    metrics, config = (json.loads((cascade_dir / name).read_text()) for name in (METRICS_FILE, CONFIG_FILE))
    texts: dict[int, Iterator] = {}  # batch size -> dev's texts in order, cycled: each block goes on where the last stopped

    def batches(batch: int) -> Iterator:
        for start in itertools.cycle(range(0, len(dev), batch)):
            b = dev.batch(torch.arange(start, start + batch) % len(dev))
            extra = seq_len - b["ids_a"].shape[1]  # padded to the length every model is timed at
            yield F.pad(b["ids_a"], (0, extra), value=config["pad_id"]), F.pad(b["mask_a"], (0, extra))

    def call_at(batch: int):
        model = load_cascade(cascade_dir)  # fresh sessions for each block, as every exported student gets
        feed = texts.setdefault(batch, batches(batch))
        # The block's warm-up calls repeat one batch, so the timed calls alone walk dev (when the warm-up walked it
        # too, batch 128's 5 blocks of 2 warm-up and 2 timed calls timed dev's batches 2, 3, 6 and 7 of 8 only).
        warm, calls = next(batches(batch)), itertools.count()
        return lambda: model(*(warm if next(calls) < WARMUP_CALLS[batch] else next(feed)))

    return call_at, {"params": metrics["params"], "runtime": "cascade"}


def cascade_timeable(cascade_dir: Path, *, seq_len: int, prepared_dir: Path) -> Timeable:
    """A cascade (workers/cascade_student.py), timed on dev's real texts in order: what it costs depends on the
    share of them its front hands on, so its figures are the mean per call (a median at batch 1 is the front's)."""
    cascade_dir = Path(cascade_dir)
    return Timeable(cascade_dir / LATENCY_FILE, partial(_load_cascade, cascade_dir, Path(prepared_dir), seq_len),
                    shared_pool=True)


def _load_torch(load_model: Callable[[], nn.Module], seq_len: int, threads: int) -> tuple[CallAt, dict]:
    return _torch_model(load_model(), seq_len=seq_len)


def torch_timeable(load_model: Callable[[], nn.Module], cache: Path, *, seq_len: int) -> Timeable:
    """A torch model, loaded by `load_model()` (picklable: a module-level function or a partial of
    one) in the timing process."""
    return Timeable(cache, partial(_load_torch, load_model, seq_len))


def _load_teacher(teacher_dir: Path) -> nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(teacher_dir)


def teacher_timeable(teacher_dir: Path, *, seq_len: int, cache_dir: Path) -> Timeable:
    """The teacher as deployed (its sequence-classification model), under torch."""
    return torch_timeable(partial(_load_teacher, teacher_dir),
                          Path(cache_dir) / f"teacher-latency-{Path(teacher_dir).name}.json", seq_len=seq_len)


def student_latency(student_dir: Path, *, seq_len: int, repeats: int, threads: int | None = None) -> dict:
    """`time_models` of one saved student."""
    return time_models({"student": student_timeable(student_dir, seq_len=seq_len)}, seq_len=seq_len,
                       repeats=repeats, threads=threads)["student"]


def teacher_latency(teacher_dir: Path, *, seq_len: int, cache_dir: Path, repeats: int,
                    threads: int | None = None) -> dict:
    """`time_models` of the teacher alone."""
    return time_models({"teacher": teacher_timeable(teacher_dir, seq_len=seq_len, cache_dir=cache_dir)},
                       seq_len=seq_len, repeats=repeats, threads=threads)["teacher"]
