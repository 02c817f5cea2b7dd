"""Teacher vs searched student vs BERT-base, measured side by side in one run.

    python bench/student.py [--job examples/rotten_tomatoes.yaml] [--quick]

Runs the data stages of the job (prepare → teacher → cache; cache hits when done), one search
at the job's beta with seed 0, retrains the derived student, then measures on this CPU at the
task's max_length: dev accuracy (teacher, student), parameters, and median latency at batch 1
and 128 of the teacher, the student and a BERT-base-shaped model (BertConfig() defaults, random
weights: latency only), and the student exported to ONNX under onnxruntime (same inputs, plan and
threads). Ends with one JSON line of flat keys. `--quick` runs a tiny slice with
one epoch everywhere to exercise the whole path in a few minutes; its accuracies are printed as
null (not comparable). Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification  # noqa: E402

from bench_job import job_and_data  # noqa: E402
from bench_job import quick_job as quick_data_job  # noqa: E402
from orchestrator.config import JobConfig  # noqa: E402
from workers.latency import hardware_name, latency_metrics  # noqa: E402
from workers.metrics import METRIC_NAMES  # noqa: E402
from workers.onnx_export import ONNX_FILE, export_onnx, onnx_latency_metrics  # noqa: E402
from workers.retrain import retrain_from_paths  # noqa: E402
from workers.search import run_search  # noqa: E402
from workers.search_data import load_search_data  # noqa: E402
from workers.student import load_student  # noqa: E402

# Timed calls at batch 1 (batch 128 gets a third, at least 5: workers.latency.timing_plan); a BERT-base
# batch of 128 takes seconds on a laptop CPU.
REPEATS = {"full": 30, "quick": 5}


def quick_job(job: JobConfig) -> JobConfig:
    """The shared data slice, plus one search and one retrain epoch: the whole path in a few minutes."""
    job = quick_data_job(job)
    return job.model_copy(update={
        "search": job.search.model_copy(update={"epochs": 1, "max_train_examples": 128}),
        "retrain": job.retrain.model_copy(update={"epochs": 1, "max_train_examples": 256}),
    })


def latencies(model: torch.nn.Module, *, seq_len: int, repeats: int) -> dict[int, float]:
    """Median ms at batch 1 and 128: the project's one timing function, the same plan for every model."""
    model.eval()
    timed = latency_metrics(model, seq_len=seq_len, repeats=repeats, gpu=False)
    return {batch: timed[f"latency_b{batch}_ms"] for batch in (1, 128)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "examples" / "rotten_tomatoes.yaml"))
    parser.add_argument("--quick", action="store_true", help="tiny slice, one epoch: no accuracy claim")
    args = parser.parse_args()
    console = Console(stderr=True)
    started = time.perf_counter()

    job, prepared, teacher, cache = job_and_data(args.job, quick=args.quick, slice_job=quick_job)
    meta = prepared.meta
    cfg = job.search.model_copy(update={"seed": 0})
    data = load_search_data(cache_uri=cache.uri, prepared_dir=str(prepared.folder), teacher_dir=str(teacher.dir),
                            max_train_examples=cfg.max_train_examples)
    searched = run_search(space=job.space, cfg=cfg, data=data, progress=True)
    console.print(f"search: {searched.genotype.to_json()} (search-valid {searched.metrics['search_valid_score']:.4f})")
    retrained = retrain_from_paths(
        arch=searched.genotype, space=job.space, cfg=job.retrain, cache_uri=cache.uri, prepared_dir=prepared.folder,
        teacher_dir=teacher.dir, out_dir=job.run_dir / f"bench-beta{cfg.beta:g}-seed0" / "student", progress=True,
    )

    # One model at a time on the same CPU, same length, same repeats.
    repeats = REPEATS["quick" if args.quick else "full"]
    models = {
        "teacher": AutoModelForSequenceClassification.from_pretrained(str(teacher.dir)),
        "student": load_student(retrained.student_dir),
        "bert_base": BertForSequenceClassification(BertConfig(num_labels=meta.num_labels)),
    }
    figures = {}
    for name, model in models.items():
        console.print(f"measuring {name} ...")
        figures[name] = {"params": sum(p.numel() for p in model.parameters()),
                         **latencies(model, seq_len=meta.max_length, repeats=repeats)}

    console.print("measuring the student under onnxruntime ...")
    onnx_dir = export_onnx(retrained.student_dir, retrained.student_dir.with_name("onnx"), force=True)
    ort = onnx_latency_metrics(onnx_dir / ONNX_FILE, vocab_size=models["student"].vocab_size,
                               seq_len=meta.max_length, pair=meta.pair, repeats=repeats)
    figures["student_onnxruntime"] = {"params": figures["student"]["params"],
                                      1: ort["latency_b1_ms"], 128: ort["latency_b128_ms"]}

    t, s, b = figures["teacher"], figures["student"], figures["bert_base"]
    # The *_acc keys hold the task's metric (named in "metric"): accuracy on the default task.
    teacher_acc = None if args.quick else teacher.score_in(meta.metric)
    student_acc = None if args.quick else retrained.metrics["dev_metric"]
    result = {
        "quick": args.quick, "metric": meta.metric,
        "accuracy_note": "quick slice: accuracies not comparable" if args.quick else f"dev split of {meta.task}",
        "teacher_acc": teacher_acc,
        "student_acc": student_acc,
        "acc_retention": None if args.quick else student_acc / teacher_acc,
        "teacher_params": t["params"],
        "student_params": s["params"],
        "params_ratio": s["params"] / t["params"],
        "teacher_b1_ms": t[1], "student_b1_ms": s[1], "bert_base_b1_ms": b[1],
        "teacher_b128_ms": t[128], "student_b128_ms": s[128], "bert_base_b128_ms": b[128],
        "speedup_vs_teacher_b1": t[1] / s[1], "speedup_vs_teacher_b128": t[128] / s[128],
        "speedup_vs_bert_base_b1": b[1] / s[1], "speedup_vs_bert_base_b128": b[128] / s[128],
        # the same student under onnxruntime; its ratio is to itself under torch, one runtime per ratio
        "student_ort_b1_ms": ort["latency_b1_ms"], "student_ort_b128_ms": ort["latency_b128_ms"],
        "ort_speedup_vs_torch_b1": s[1] / ort["latency_b1_ms"],
        "ort_speedup_vs_torch_b128": s[128] / ort["latency_b128_ms"],
        "genotype": searched.genotype.to_json(),
        "seq_len": meta.max_length,
        "hardware": hardware_name("cpu"),
        "wall_s": time.perf_counter() - started,
    }

    table = Table(title=f"{meta.task}, max_length {meta.max_length}, {result['hardware']}")
    for column in ("model", f"dev {METRIC_NAMES[meta.metric]}", "params", "b1 ms", "b128 ms", "student speed-up b1 / b128"):
        table.add_column(column, justify="left" if column == "model" else "right")
    accs = {"teacher": teacher_acc, "student": student_acc, "bert_base": None, "student_onnxruntime": student_acc}
    for name, f in figures.items():
        acc = "-" if accs[name] is None else f"{accs[name]:.4f}"
        speedup = "1.0x / 1.0x" if name == "student" else f"{f[1] / s[1]:.1f}x / {f[128] / s[128]:.1f}x"
        table.add_row(name, acc, f"{f['params'] / 1e6:.2f}M", f"{f[1]:.2f}", f"{f[128]:.1f}", speedup)
    console.print(table)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
