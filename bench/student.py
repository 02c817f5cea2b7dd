"""The job's champion against its teacher and BERT-base, timed side by side in one run.

    python bench/student.py [--job examples/rotten_tomatoes.yaml] [--quick]

Runs the job (after `make demo` every stage is a cache hit and this takes a few minutes; like any
rerun of a job, it registers its pick again) and takes its champion: a searched cell, a small
transformer, an int8 graph or a cascade, whichever the job's budget picked. Then it times, in turns at
the task's max_length (`orchestrator.measure.time_models`): the teacher, the champion, the champion's
other runtime (the torch parent of a graph, or the fp32 ONNX export of a torch student; for a cascade,
its front's two) and the teacher as a user would first speed it up (exported to onnxruntime, int8 by the
students' quantiser; latency only). A BERT-base-shaped model (BertConfig() defaults, random weights:
latency only) is timed beside the teacher in a second, shorter round (a batch of 128 takes it seconds):
its ratios to the champion go through the teacher timed in both. Every figure is the mean per call, as
the job's budget reads it; a cascade is called on dev's texts in order (its cost depends on the text).
Ends with one JSON line of flat keys; `student_*` is the champion as registered, `student_ort_*` its
onnxruntime graph (a cascade's: its front's). `--quick` runs one tiny round on a slice to exercise the
whole path in a few minutes; its accuracies are printed as null (not comparable). Figures, not tests:
nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification  # noqa: E402

from bench_job import job_and_data, quick_pipeline_job  # noqa: E402
from orchestrator.measure import (  # noqa: E402
    Timeable,
    cascade_timeable,
    student_timeable,
    teacher_timeable,
    time_models,
    torch_timeable,
)
from orchestrator.pipeline import CASCADE_REPEATS, run_pipeline  # noqa: E402
from workers.latency import hardware_name  # noqa: E402
from workers.metrics import METRIC_NAMES  # noqa: E402
from workers.onnx_export import export_module, export_onnx, onnx_call_at, quantize_int8  # noqa: E402
from workers.student_files import METRICS_FILE, is_cascade_student, is_onnx_student  # noqa: E402

# Timed calls at batch 1 (batch 128 gets a third, 5 to 10: workers.latency.timing_plan): the champion's round
# as the job times its cascades (orchestrator.pipeline.CASCADE_REPEATS), BERT-base's shorter.
REPEATS = {"full": CASCADE_REPEATS, "quick": 5}
BERT_REPEATS = {"full": 30, "quick": 5}


class _TeacherLogits(torch.nn.Module):
    """The teacher's logits from the students' graph inputs (ids, a bool mask)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask.long()).logits


def teacher_graph(teacher_dir: Path, folder: Path, *, seq_len: int) -> Timeable:
    """The teacher exported to onnxruntime and put through the students' int8 quantiser: a user's
    first try for speed, timed like the champion."""
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir)).eval()
    vocab, params = model.config.vocab_size, sum(p.numel() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    args = (torch.randint(1, vocab, (2, 7)), torch.ones(2, 7, dtype=torch.bool))  # ids, mask
    export_module(_TeacherLogits(model), args, folder / "fp32.onnx", names=["ids", "mask"])
    quantize_int8(folder / "fp32.onnx", folder / "int8.onnx")

    return Timeable(folder / "latency.json", partial(_load_graph, folder / "int8.onnx", vocab, params, seq_len))


def _load_graph(path: Path, vocab: int, params: int, seq_len: int, threads: int):
    call_at = onnx_call_at(path, vocab_size=vocab, seq_len=seq_len, pair=False, threads=threads)
    return call_at, {"params": params, "runtime": "onnxruntime"}


def _bert_base(num_labels: int) -> BertForSequenceClassification:
    return BertForSequenceClassification(BertConfig(num_labels=num_labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "examples" / "rotten_tomatoes.yaml"))
    parser.add_argument("--quick", action="store_true", help="tiny slice, one epoch: no accuracy claim")
    args = parser.parse_args()
    console = Console(stderr=True)
    started = time.perf_counter()

    job, prepared, teacher, _ = job_and_data(args.job, quick=args.quick, slice_job=quick_pipeline_job)
    meta = prepared.meta
    champion = run_pipeline(job, progress=False, console=Console(stderr=True, quiet=True)).champion
    console.print(f"champion: {champion.key} ({champion.route}), dev {champion.score:.4f}")
    champion_dir = Path(champion.student_dir)
    cascade = is_cascade_student(champion_dir)
    as_registered = "student_cascade" if cascade else (
        "student_onnxruntime" if is_onnx_student(champion_dir) else "student_torch")
    with tempfile.TemporaryDirectory(prefix="bench-student-") as tmp:  # exports and fresh timings
        scratch = Path(tmp)
        # The other runtimes: a graph's torch parent (`<parent key>-<variant>`), a torch student's fp32 export;
        # a cascade's front's (its folder names the front it was made of, beside it in the run's students/).
        runs_as = champion_dir.with_name(champion.metrics["front"]) if cascade else champion_dir
        if is_onnx_student(runs_as):
            variant = json.loads((runs_as / METRICS_FILE).read_text())["variant"]
            torch_dir, ort_dir = runs_as.with_name(runs_as.name.removesuffix(f"-{variant}")), runs_as
        else:
            torch_dir, ort_dir = runs_as, export_onnx(runs_as, scratch / "onnx")

        # All in turns on the same CPU, same length, plan and threads; fresh figures (scratch caches).
        size = "quick" if args.quick else "full"
        seq, labels = meta.max_length, meta.num_labels
        models = {"teacher": teacher_timeable(teacher.dir, seq_len=seq, cache_dir=scratch),
                  "student_torch": Timeable(scratch / "torch.json", student_timeable(torch_dir, seq_len=seq).load),
                  "student_onnxruntime": Timeable(scratch / "ort.json", student_timeable(ort_dir, seq_len=seq).load),
                  "teacher_int8": teacher_graph(teacher.dir, scratch / "teacher", seq_len=seq)}
        if cascade:
            models["student_cascade"] = replace(cascade_timeable(champion_dir, seq_len=seq, prepared_dir=prepared.folder),
                                                cache=scratch / "cascade.json")
        console.print(f"timing {', '.join(models)} side by side ...")
        timed = time_models(models, seq_len=seq, repeats=REPEATS[size])
        console.print("timing the teacher and BERT-base side by side ...")
        beside = time_models({"teacher": teacher_timeable(teacher.dir, seq_len=seq, cache_dir=scratch / "bert"),
                              "bert_base": torch_timeable(partial(_bert_base, labels), scratch / "bert.json",
                                                          seq_len=seq)}, seq_len=seq, repeats=BERT_REPEATS[size])
    figures = {name: {"params": f["params"], 1: f["latency_b1_mean_ms"], 128: f["latency_b128_mean_ms"]}
               for name, f in timed.items()}
    # BERT-base in the champion round's terms: its time over the teacher's beside it, times the teacher's there
    figures["bert_base"] = {"params": beside["bert_base"]["params"], **{
        b: beside["bert_base"][f"latency_b{b}_mean_ms"] / beside["teacher"][f"latency_b{b}_mean_ms"] * figures["teacher"][b]
        for b in (1, 128)}}
    figures["student"] = figures[as_registered]
    ort, torch_s = figures["student_onnxruntime"], figures["student_torch"]

    t, ti, s, b = figures["teacher"], figures["teacher_int8"], figures["student"], figures["bert_base"]
    # The *_acc keys hold the task's metric (named in "metric"): accuracy on the default task.
    teacher_acc = None if args.quick else teacher.score_in(meta.metric)
    student_acc = None if args.quick else champion.score
    result = {
        "quick": args.quick, "metric": meta.metric,
        "accuracy_note": "quick slice: accuracies not comparable" if args.quick else f"dev split of {meta.task}",
        "teacher_acc": teacher_acc,
        "student_acc": student_acc,
        "acc_retention": None if args.quick else student_acc / teacher_acc,
        "student_key": champion.key, "student_route": champion.route,
        "student_runtime": timed[as_registered]["runtime"],
        "teacher_params": t["params"],
        "student_params": s["params"],
        "params_ratio": s["params"] / t["params"],
        "teacher_b1_ms": t[1], "student_b1_ms": s[1], "bert_base_b1_ms": b[1],
        "teacher_b128_ms": t[128], "student_b128_ms": s[128], "bert_base_b128_ms": b[128],
        "speedup_vs_teacher_b1": t[1] / s[1], "speedup_vs_teacher_b128": t[128] / s[128],
        "speedup_vs_bert_base_b1": b[1] / s[1], "speedup_vs_bert_base_b128": b[128] / s[128],
        # the teacher as a user would first speed it up: onnxruntime int8 (latency only)
        "teacher_int8_b1_ms": ti[1], "teacher_int8_b128_ms": ti[128],
        "speedup_vs_teacher_int8_b1": ti[1] / s[1], "speedup_vs_teacher_int8_b128": ti[128] / s[128],
        # the champion's graph under onnxruntime against its torch form; one runtime per ratio
        "student_ort_b1_ms": ort[1], "student_ort_b128_ms": ort[128],
        "ort_speedup_vs_torch_b1": torch_s[1] / ort[1],
        "ort_speedup_vs_torch_b128": torch_s[128] / ort[128],
        "genotype": champion.genotype,
        "seq_len": meta.max_length,
        "hardware": hardware_name("cpu"),
        "wall_s": time.perf_counter() - started,
    }

    table = Table(title=f"{meta.task}, max_length {meta.max_length}, {result['hardware']}")
    for column in ("model", f"dev {METRIC_NAMES[meta.metric]}", "params", "b1 ms", "b128 ms", "student speed-up b1 / b128"):
        table.add_column(column, justify="left" if column == "model" else "right")
    accs = {"teacher": teacher_acc, "teacher_int8": None, "student_torch": None, "student_onnxruntime": None,
            "bert_base": None, **({"student_cascade": None} if cascade else {})}
    accs[as_registered] = student_acc
    for name in accs:
        f, acc = figures[name], accs[name]
        table.add_row(name, "-" if acc is None else f"{acc:.4f}", f"{f['params'] / 1e6:.2f}M", f"{f[1]:.2f}",
                      f"{f[128]:.1f}", f"{f[1] / s[1]:.1f}x / {f[128] / s[128]:.1f}x")
    console.print(table)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
