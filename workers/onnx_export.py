"""A saved student as an ONNX model with dynamic batch and length, checked against torch on export.

The folder it writes holds model.onnx (inputs ids/mask, and ids_b/mask_b for pair tasks; output
logits (B, C)), the student's config.json and its tokenizer, so a user needs only onnxruntime and
the tokenizer to serve it. With `int8`, model.onnx is the checked fp32 graph put through
onnxruntime's dynamic quantiser (int8 weights for every matmul, per output channel, and for the
embedding table; activations quantised per call), and export.json records how far its logits
moved from torch's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from search_space.layers import ProbedStack, StudentOutput
from workers.dataset import TargetSplit
from workers.latency import CallAt, hardware_name, pinned_threads, planned_timings
from workers.local_files import MANIFEST, check_destination, deliver_files
from workers.quiet import quiet_logger
from workers.student import load_student
from workers.student_files import (
    CONFIG_FILE,
    LATENCY_FILE,
    METRICS_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    is_onnx_student,
)

OPSET = 18
PARITY_ATOL = 1e-4  # max |logit difference| onnxruntime may show against torch
# (batch, length) pairs the parity check runs: neither is the shape traced at export, so a shape
# the exporter pinned shows up as an error here rather than at the user's first request.
PARITY_SHAPES = ((1, 1), (1, 5), (3, 17))
# Dilated convs and linears reach the quantiser as MatMuls (see _gemms_as_matmuls); undilated convs
# stay fp32 Conv (int8 ConvInteger was not measured here).
INT8_OPS = ["MatMul", "Gather"]
EXPORT_REPORT = "export.json"


class _Logits(nn.Module):
    """The student's logits alone: what an ONNX graph can return."""

    def __init__(self, student: ProbedStack) -> None:
        super().__init__()
        self.student = student

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, ids_b: torch.Tensor | None = None,
                mask_b: torch.Tensor | None = None) -> torch.Tensor:
        return self.student(ids, mask, ids_b, mask_b).logits  # (B, C)


def input_names(*, pair: bool) -> list[str]:
    return ["ids", "mask", "ids_b", "mask_b"] if pair else ["ids", "mask"]


def example_feed(vocab_size: int, *, batch: int, length: int, pair: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids (int64) and masks (bool, the last row half padded) for every input of the graph."""
    gen = torch.Generator().manual_seed(seed)
    feed = {}
    for name in input_names(pair=pair):
        if name.startswith("ids"):
            feed[name] = torch.randint(1, vocab_size, (batch, length), generator=gen).numpy()
        else:
            mask = torch.ones(batch, length, dtype=torch.bool)
            mask[-1, max(1, length // 2):] = False
            feed[name] = mask.numpy()
    return feed


def export_onnx(student_dir: str | Path, out_dir: str | Path, *, force: bool = False, int8: bool = False) -> Path:
    """Write `student_dir`'s student to `out_dir` as ONNX (see module doc); returns `out_dir`.

    `out_dir` follows pull's rule (workers.local_files.deliver_files): new or empty, or with `force`
    only the export's own files change. Raises ValueError when the fp32 graph's logits differ from
    torch's by more than PARITY_ATOL on PARITY_SHAPES; nothing is written to `out_dir` then.
    """
    student_dir = Path(student_dir)
    check_destination(out_dir, force=force)
    if is_onnx_student(student_dir):
        return _deliver_exported(student_dir, out_dir, force=force, int8=int8)
    student = load_student(student_dir)
    pair = bool(json.loads((student_dir / CONFIG_FILE).read_text()).get("pair", False))
    with tempfile.TemporaryDirectory(prefix="adaray-onnx-") as tmp:
        folder = Path(tmp)
        _export_graph(student, folder / ONNX_FILE, pair=pair)
        report = {"int8": int8, "fp32_max_logit_diff": check_parity(student, folder / ONNX_FILE, pair=pair)}
        if int8:
            fp32 = folder / "fp32.onnx"
            os.replace(folder / ONNX_FILE, fp32)
            quantize_int8(fp32, folder / ONNX_FILE)
            fp32.unlink()
            report["int8_max_logit_diff"] = logit_diff(student, folder / ONNX_FILE, pair=pair)
        (folder / EXPORT_REPORT).write_text(json.dumps(report, indent=2))
        _copy_serving_files(student_dir, folder)
        return deliver_files(folder, out_dir, force=force)


def _copy_serving_files(src: Path, dst: Path) -> None:
    """Config, tokenizer (and an exported graph with its report): torch's weights and a job's figures stay behind."""
    for item in src.iterdir():
        if item.is_file() and item.name not in (WEIGHTS_FILE, MANIFEST, METRICS_FILE, LATENCY_FILE):
            shutil.copy2(item, dst / item.name)


def _deliver_exported(folder: Path, out_dir: str | Path, *, force: bool, int8: bool) -> Path:
    """A student a job already exported (a serving variant), written as it is when it is what was asked."""
    has_int8 = bool(json.loads((folder / EXPORT_REPORT).read_text()).get("int8"))
    if has_int8 != int8:
        have, want = ("int8", "fp32") if has_int8 else ("fp32", "int8")
        raise ValueError(f"{folder} is already an ONNX graph with {have} weights; for {want}, export the student it "
                         "was made from (its registry version's parent_student tag)")
    with tempfile.TemporaryDirectory(prefix="adaray-onnx-") as tmp:
        _copy_serving_files(folder, Path(tmp))
        return deliver_files(Path(tmp), out_dir, force=force)


def _export_graph(student: ProbedStack, path: Path, *, pair: bool) -> None:
    names = input_names(pair=pair)
    feed = example_feed(student.vocab_size, batch=2, length=7, pair=pair)
    export_module(_Logits(student.eval()), tuple(torch.from_numpy(feed[n]) for n in names), path, names=names)


def export_module(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, *, names: list[str]) -> None:
    """`module(*args)` -> logits as one ONNX file at `path`, batch and length dynamic on every input."""
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2)
    dynamic = {name: {0: batch, 1: length} for name in names}
    # The exporter prints its steps and warns about axis names; the user asked for a file, not those.
    # torch.onnx's logger: "torchvision is not installed" and the like
    with quiet_logger("torch.onnx"), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=dynamic,
                          input_names=names, output_names=["logits"], opset_version=OPSET, verbose=False,
                          external_data=False)  # one file: these models are far below ONNX's 2 GB limit


_SHARED_POOL = False  # set by share_thread_pool: onnxruntime then refuses a session with a pool of its own


def share_thread_pool(threads: int) -> None:
    """One intra-op pool of `threads` for every later `session` of this process, before it opens any.
    Two sessions each with their own pool, called one after the other (a cascade), each leave threads
    spinning beside the other's: on 2 cores the demo's front at batch 128 plus its back on 14 rows took
    107-114 ms with a pool each, 70 ms with one pool, against 50 + 18 ms apart. Process-wide and for
    good: onnxruntime refuses any later session with a pool of its own."""
    global _SHARED_POOL
    # onnxruntime's Python binding of CreateEnvWithGlobalThreadPools
    from onnxruntime.capi import _pybind_state

    _pybind_state.set_global_thread_pool_sizes(threads, 1)
    _SHARED_POOL = True


def session(path: str | Path, *, threads: int | None = None):
    """An onnxruntime CPU session on `path` (`threads` intra-op threads; None: onnxruntime's default), or
    on the process's one pool once `share_thread_pool` has made it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if _SHARED_POOL:
        options.use_per_session_threads = False
    elif threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_int8(fp32: Path, out: Path) -> None:
    """onnxruntime's dynamic int8 quantiser on `fp32` (INT8_OPS), written to `out`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32))
    # The exporter's value_info keeps shapes from the traced call that onnx's strict shape inference
    # (run by the quantiser) rejects once batch and length are dynamic; onnxruntime needs none of it.
    del model.graph.value_info[:]
    _gemms_as_matmuls(model)
    with quiet_logger():  # the quantiser warns through the root logger to run its pre-processing
        # reduce_range (7-bit weights): on x86 CPUs without VNNI (AVX2 only) onnxruntime's u8s8 kernels
        # saturate their int16 sums; measured on such a CPU, int8 logits drifted 0.12-0.47 from torch's
        # (under 0.05 with it). A graph may run on another machine than the one that exported it.
        quantize_dynamic(model, str(out), op_types_to_quantize=INT8_OPS, per_channel=True,
                         weight_type=QuantType.QInt8, reduce_range=True)


def _gemms_as_matmuls(model) -> None:
    """Rewrite, in place, each Gemm whose weight is a constant (an initializer, or a Reshape of one)
    as MatMul + Add: the dilated convs' unrolled kernels reach the graph that way, and the dynamic
    quantiser turns MatMuls into int8 but leaves Gemms in fp32."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    made = {n.output[0]: n for n in graph.node if n.op_type == "Reshape" and all(i in inits for i in n.input)}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1] if node.op_type == "Gemm" and len(node.input) > 1 else None
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if weight is None or not plain or (weight not in inits and weight not in made):
            nodes.append(node)
            continue
        if weight in inits:
            w = numpy_helper.to_array(inits[weight])
        else:  # the Reshape, done here once rather than on every call
            reshape = made[weight]
            w = numpy_helper.to_array(inits[reshape.input[0]]).reshape(numpy_helper.to_array(inits[reshape.input[1]]))
        w = w.T if attrs.get("transB", 0) else w  # (in, out)
        name = f"{node.output[0]}_weight"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), name))
        if len(node.input) > 2 and node.input[2]:
            product = f"{node.output[0]}_matmul"
            nodes += [helper.make_node("MatMul", [node.input[0], name], [product]),
                      helper.make_node("Add", [product, node.input[2]], list(node.output))]
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], name], list(node.output)))
    consumed = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.output[0] not in made or n.output[0] in consumed)
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used]  # the Reshapes' sources, now folded
    for t in unused:
        graph.initializer.remove(t)
    onnx.checker.check_model(model)


def logit_diff(student: ProbedStack, path: Path, *, pair: bool) -> float:
    """Max |logit difference| between onnxruntime on `path` and torch over PARITY_SHAPES."""
    sess = session(path)
    worst = 0.0
    for batch, length in PARITY_SHAPES:
        feed = example_feed(student.vocab_size, batch=batch, length=length, pair=pair, seed=batch)
        (ours,) = sess.run(["logits"], feed)
        with torch.inference_mode():
            want = student(*(torch.from_numpy(feed[n]) for n in input_names(pair=pair))).logits.numpy()
        worst = max(worst, float(np.abs(ours - want).max()))
    return worst


def check_parity(student: ProbedStack, path: Path, *, pair: bool) -> float:
    """Max |logit difference| between onnxruntime and torch over PARITY_SHAPES; ValueError above PARITY_ATOL."""
    worst = logit_diff(student, path, pair=pair)
    if worst > PARITY_ATOL:
        raise ValueError(f"the ONNX graph's logits differ from torch's by {worst:.2e} (> {PARITY_ATOL}); "
                         "not written: please report it with the student folder")
    return worst


class OnnxStudent:
    """A student written by `export_onnx`, run by onnxruntime: the torch student's call, logits only
    (no probes, so no early exit)."""

    def __init__(self, path: str | Path, *, pad_id: int | None = None, threads: int | None = None) -> None:
        self.session = session(path, threads=threads)
        self.pad_id = pad_id  # what a predictor pads with (config.json's pad_id)
        self.names = [i.name for i in self.session.get_inputs()]  # ids, mask (, ids_b, mask_b)

    def __call__(self, ids_a: torch.Tensor, mask_a: torch.Tensor, ids_b: torch.Tensor | None = None,
                 mask_b: torch.Tensor | None = None) -> StudentOutput:
        given = {"ids": ids_a.long(), "mask": mask_a.bool(), "ids_b": ids_b, "mask_b": mask_b}
        feed = {name: (given[name].bool() if name.startswith("mask") else given[name].long()).numpy()
                for name in self.names}
        (logits,) = self.session.run(["logits"], feed)
        return StudentOutput(torch.from_numpy(logits))  # (B, C)


def onnx_predictions(path: str | Path, split: TargetSplit, *, batch_size: int = 128,
                     threads: int | None = None) -> torch.Tensor:
    """onnxruntime's predicted class for every row of `split`. (N,) int64"""
    student = OnnxStudent(path, threads=threads)
    return torch.cat([student(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b")).logits.argmax(-1)
                      for batch in split.batches(batch_size=batch_size)])


def onnx_call_at(path: str | Path, *, vocab_size: int, seq_len: int, pair: bool, threads: int) -> CallAt:
    """Calls of the graph at `path` under onnxruntime (`threads` intra-op threads) on full-length
    random inputs of each batch size: what `torch_call_at` gives for a torch model. Each call_at(batch)
    opens its own session, closed when its call is dropped, so no idle session's threads stay behind."""

    def call_at(batch: int):
        sess = session(path, threads=threads)
        feed = example_feed(vocab_size, batch=batch, length=seq_len, pair=pair)
        feed = {k: np.ones_like(v) if k.startswith("mask") else v for k, v in feed.items()}  # full length
        return lambda: sess.run(["logits"], feed)

    return call_at


def onnx_latency_metrics(path: str | Path, *, vocab_size: int, seq_len: int, pair: bool = False, repeats: int = 30,
                         threads: int | None = None) -> dict[str, float]:
    """What `workers.latency.latency_metrics` gives for torch (the same keys, plan and full-length
    inputs), for the graph at `path` run by onnxruntime with `threads` intra-op threads (None:
    torch's count, so both runtimes are timed on as many threads)."""
    with pinned_threads(threads) as pinned:
        call_at = onnx_call_at(path, vocab_size=vocab_size, seq_len=seq_len, pair=pair, threads=pinned)
        metrics = planned_timings(call_at, repeats=repeats)
        hardware = hardware_name("cpu")
    return {**metrics, "hardware": hardware, "threads": pinned, "seq_len": seq_len, "runtime": "onnxruntime"}
