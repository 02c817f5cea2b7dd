"""Compression routes side by side, one student, one run: the full table, the task vocabulary, ONNX,
int8 (onnxruntime) and early exit, against the teacher.

    python bench/routes.py [--job examples/rotten_tomatoes.yaml] [--genotype JSON] [--quick]

Runs the job's data stages (cache hits when done), retrains one genotype (default: the benches' hand
cell, bench_job.HAND_CELL) with the whole embedding table, then derives
each route from that one trained student, so a route's change is the route's alone:
- taskvocab: the rows of the ids its train split uses (`retrain.task_vocab`'s remap);
- onnx: the task-vocabulary student exported (fp32) and run by onnxruntime;
- int8: the same export through onnxruntime's dynamic int8 quantiser;
- earlyexit: the task-vocabulary student stopping at its probes, the threshold swept on dev;
- lowrank: a route with a training of its own: the same genotype retrained alike with a
  rank-r embedding (`space.embedding_rank`, LadaBERT), then given its task vocabulary;
- kronecker: the same genotype retrained alike with a k-term Kronecker table (`space.embedding_kronecker`,
  KroneckerBERT) over the whole vocabulary (no rows to drop);
- tinybert: the small-transformer family's member `--transformer` (TinyBERT's task stage), distilled
  from the same cache with the same retrain settings, then given its task vocabulary.
Each is scored on dev and test in the task's metric. torch arms are timed by
`workers.latency.latency_metrics`, onnxruntime arms by `onnx_latency_metrics` (same plan, inputs and
threads), early exit by `exit_latency_b1` on real dev texts at every threshold (0 is the full
model; median of three alternating rounds). Routes not built yet (Kronecker tables, the
small-transformer family) print null. Ends with one JSON line of flat keys. `--quick` runs a tiny slice with one epoch: its scores
are not comparable. Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from bench_job import HAND_CELL, job_and_data  # noqa: E402
from search_space.config import TransformerConfig  # noqa: E402
from search_space.genotype import Genotype  # noqa: E402
from workers.cache import open_cache  # noqa: E402
from workers.dataset import load_split  # noqa: E402
from workers.early_exit import exit_curve, exit_latency_b1, pick_threshold  # noqa: E402
from workers.latency import hardware_name, latency_metrics  # noqa: E402
from workers.metrics import task_score  # noqa: E402
from workers.onnx_export import ONNX_FILE, export_onnx, onnx_latency_metrics, onnx_predictions  # noqa: E402
from workers.retrain import predict_classes, retrain_from_paths, task_vocabulary_student  # noqa: E402
from workers.student import load_student, save_student  # noqa: E402

# The demo job's member: the teacher's bottom two layers cut to 8 heads and 128 ffn neurons, its whole table.
DEFAULT_TRANSFORMER = {"layers": 2, "hidden": 384, "heads": 8, "head_dim": 32, "ffn": 128, "init": "teacher",
                       "epochs": 4}
REPEATS = {"full": 30, "quick": 5}
EXIT_EXAMPLES = {"full": 300, "quick": 40}  # real dev texts timed one at a time per threshold
EXIT_ROUNDS = 3  # the median of three rounds' means: one busy moment on a shared machine is not a figure
MAX_DROP = 0.01  # "at no more than 1 point lost"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "examples" / "rotten_tomatoes.yaml"))
    parser.add_argument("--genotype", default=None, help="a genotype's JSON (default: the benches' hand cell)")
    parser.add_argument("--quick", action="store_true", help="tiny slice, one epoch: no score claim")
    parser.add_argument("--rank", type=int, default=32, help="the low-rank route's embedding rank")
    parser.add_argument("--kronecker", type=int, default=32, help="the Kronecker route's number of terms")
    parser.add_argument("--transformer", default=json.dumps(DEFAULT_TRANSFORMER),
                        help="the small-transformer member's settings (JSON, as in a job's small_transformers)")
    args = parser.parse_args()
    genotype = HAND_CELL if args.genotype is None else Genotype.from_json(args.genotype)
    console = Console(stderr=True)
    started = time.perf_counter()
    size = "quick" if args.quick else "full"

    job, prepared, teacher, cache = job_and_data(args.job, quick=args.quick)
    meta = prepared.meta
    cfg = job.retrain.model_copy(update={"task_vocab": False, "exit_max_drop": None})
    if args.quick:
        cfg = cfg.model_copy(update={"epochs": 1, "min_steps": 0, "max_train_examples": 256})
    train, dev, test = (open_cache(cache.uri).split("train"), load_split(prepared.folder, "dev"),
                        load_split(prepared.folder, "test"))
    out = job.run_dir / "bench-routes"
    full_dir = retrain_from_paths(arch=genotype, space=job.space, cfg=cfg, cache_uri=cache.uri,
                                  prepared_dir=prepared.folder, teacher_dir=teacher.dir, out_dir=out / "full",
                                  progress=True).student_dir

    def scores(predict) -> dict[str, float]:  # predict(split) -> (N,) classes
        return {name: task_score(predict(split), split.labels, num_labels=meta.num_labels, metric=meta.metric)
                for name, split in (("dev", dev), ("test", test))}

    full = load_student(full_dir)
    small = task_vocabulary_student(full, train=train, meta=meta, tokenizer_dir=teacher.dir).eval()
    teacher_model = AutoModelForSequenceClassification.from_pretrained(str(teacher.dir)).eval()
    threads, repeats = torch.get_num_threads(), REPEATS[size]
    rows: dict[str, dict] = {}

    def torch_row(model: torch.nn.Module) -> dict:
        timed = latency_metrics(model, seq_len=meta.max_length, repeats=repeats, gpu=False, threads=threads)
        return {"params": sum(p.numel() for p in model.parameters()), "b1": timed["latency_b1_ms"],
                "b128": timed["latency_b128_ms"]}

    console.print("measuring the teacher, the full student and the task-vocabulary student (torch) ...")
    rows["teacher"] = {**torch_row(teacher_model), "dev": teacher.score_in(meta.metric),
                       "test": None}
    console.print(f"retraining with a rank-{args.rank} embedding ...")
    low_dir = retrain_from_paths(arch=genotype, space=dataclasses.replace(job.space, embedding_rank=args.rank),
                                 cfg=cfg, cache_uri=cache.uri, prepared_dir=prepared.folder, teacher_dir=teacher.dir,
                                 out_dir=out / f"lowrank{args.rank}", progress=True).student_dir
    low = task_vocabulary_student(load_student(low_dir), train=train, meta=meta, tokenizer_dir=teacher.dir).eval()
    console.print(f"retraining with a {args.kronecker}-term Kronecker embedding ...")
    kron = load_student(retrain_from_paths(
        arch=genotype, space=dataclasses.replace(job.space, embedding_kronecker=args.kronecker), cfg=cfg,
        cache_uri=cache.uri, prepared_dir=prepared.folder, teacher_dir=teacher.dir,
        out_dir=out / f"kronecker{args.kronecker}", progress=True).student_dir).eval()
    tiny_arch = TransformerConfig.from_dict(json.loads(args.transformer))
    console.print(f"retraining the small transformer {tiny_arch.name} ...")
    tiny_dir = retrain_from_paths(arch=tiny_arch, space=job.space, cfg=cfg, cache_uri=cache.uri,
                                  prepared_dir=prepared.folder, teacher_dir=teacher.dir,
                                  out_dir=out / f"tinybert-{tiny_arch.name}", progress=True).student_dir
    tiny = task_vocabulary_student(load_student(tiny_dir), train=train, meta=meta, tokenizer_dir=teacher.dir).eval()
    for name, model in (("full", full), ("taskvocab", small), ("lowrank", low), ("kronecker", kron),
                        ("tinybert", tiny)):
        rows[name] = {**torch_row(model),
                      **scores(lambda split, m=model: predict_classes(m, split, batch_size=256))}

    with tempfile.TemporaryDirectory(prefix="adaray-routes-") as tmp:
        saved = json.loads((full_dir / "config.json").read_text())  # architecture + task facts
        small_dir = save_student(small, Path(tmp) / "taskvocab", tokenizer_dir=teacher.dir, extra={
            k: v for k, v in saved.items() if k not in small.config_dict()})
        for name, int8 in (("onnx", False), ("int8", True)):
            console.print(f"exporting and measuring {name} (onnxruntime) ...")
            path = export_onnx(small_dir, Path(tmp) / name, int8=int8) / ONNX_FILE
            timed = onnx_latency_metrics(path, vocab_size=small.vocab_size, seq_len=meta.max_length, pair=meta.pair,
                                         repeats=repeats, threads=threads)
            rows[name] = {"params": rows["taskvocab"]["params"], "file_mb": path.stat().st_size / 1e6,
                          "b1": timed["latency_b1_ms"], "b128": timed["latency_b128_ms"],
                          **scores(lambda split, p=path: onnx_predictions(p, split, threads=threads))}

    console.print("sweeping the early-exit threshold on dev ...")
    dev_curve = exit_curve(small, dev, metric=meta.metric)
    test_curve = {p["threshold"]: p["score"] for p in exit_curve(small, test, metric=meta.metric)}
    chosen = pick_threshold(dev_curve, max_drop=MAX_DROP)
    rounds = [[exit_latency_b1(small, dev, threshold=p["threshold"], examples=EXIT_EXAMPLES[size])["mean_b1_ms"]
               for p in dev_curve] for _ in range(EXIT_ROUNDS)]  # thresholds alternate within each round
    for i, point in enumerate(dev_curve):
        times = sorted(r[i] for r in rounds)
        point.update(test_score=test_curve[point["threshold"]], mean_b1_ms=times[len(times) // 2],
                     spread_b1_ms=times[-1] - times[0])
    at = {p["threshold"]: p for p in dev_curve}
    rows["earlyexit"] = {"params": rows["taskvocab"]["params"], "b1": at[chosen]["mean_b1_ms"], "b128": None,
                         "dev": at[chosen]["score"], "test": at[chosen]["test_score"]}

    t, f, v, o, q = (rows[k] for k in ("teacher", "full", "taskvocab", "onnx", "int8"))
    tenth = [r["dev"] for k, r in rows.items() if k != "teacher" and r["params"] <= t["params"] / 10]
    result = {
        "quick": args.quick,
        "score_note": f"{meta.metric} on the dev/test splits of {meta.task}" + (
            "; quick slice: scores not comparable" if args.quick else ""),
        "genotype": genotype.to_json(),
        "teacher_params": t["params"], "teacher_dev": t["dev"], "teacher_b1_ms": t["b1"], "teacher_b128_ms": t["b128"],
        "full_dev": f["dev"], "full_test": f["test"], "full_params": f["params"],
        "full_b1_ms": f["b1"], "full_b128_ms": f["b128"],
        "taskvocab_dev": v["dev"], "taskvocab_test": v["test"], "taskvocab_params": v["params"],
        "taskvocab_dev_delta": 100 * (v["dev"] - f["dev"]),
        "taskvocab_params_over_teacher": v["params"] / t["params"],
        "lowrank_rank": args.rank, "lowrank_dev": rows["lowrank"]["dev"], "lowrank_test": rows["lowrank"]["test"],
        "lowrank_params": rows["lowrank"]["params"], "lowrank_params_over_teacher": rows["lowrank"]["params"] / t["params"],
        # the bar: against the same genotype with the full embedding (points of dev score)
        "lowrank_dev_delta": 100 * (rows["lowrank"]["dev"] - f["dev"]),
        "lowrank_b1_ms": rows["lowrank"]["b1"], "lowrank_b128_ms": rows["lowrank"]["b128"],
        "onnx_dev": o["dev"], "onnx_b1_ms": o["b1"], "onnx_b128_ms": o["b128"], "onnx_file_mb": o["file_mb"],
        "onnx_speedup_vs_torch_b1": v["b1"] / o["b1"], "onnx_speedup_vs_torch_b128": v["b128"] / o["b128"],
        "int8_dev": q["dev"], "int8_test": q["test"], "int8_b1_ms": q["b1"], "int8_b128_ms": q["b128"],
        "int8_file_mb": q["file_mb"],
        # int8 against fp32 within one runtime (onnxruntime both)
        "int8_dev_delta": 100 * (q["dev"] - o["dev"]),
        "int8_speedup_b1": o["b1"] / q["b1"], "int8_speedup_b128": o["b128"] / q["b128"],
        "earlyexit_threshold": chosen, "earlyexit_mean_cells": at[chosen]["mean_cells"],
        "earlyexit_dev": at[chosen]["score"], "earlyexit_test": at[chosen]["test_score"],
        "earlyexit_full_b1_ms": at[0.0]["mean_b1_ms"], "earlyexit_b1_ms": at[chosen]["mean_b1_ms"],
        "earlyexit_speedup_b1_at_1pt": at[0.0]["mean_b1_ms"] / at[chosen]["mean_b1_ms"],
        "earlyexit_curve": json.dumps([{k: round(val, 4) for k, val in p.items()} for p in dev_curve]),
        "kronecker_terms": args.kronecker, "kronecker_dev": rows["kronecker"]["dev"],
        "kronecker_test": rows["kronecker"]["test"], "kronecker_params": rows["kronecker"]["params"],
        "kronecker_dev_delta": 100 * (rows["kronecker"]["dev"] - f["dev"]),
        "kronecker_b1_ms": rows["kronecker"]["b1"], "kronecker_b128_ms": rows["kronecker"]["b128"],
        "tinybert": tiny_arch.name, "tinybert_dev": rows["tinybert"]["dev"], "tinybert_test": rows["tinybert"]["test"],
        "tinybert_params": rows["tinybert"]["params"], "tinybert_b1_ms": rows["tinybert"]["b1"],
        "tinybert_b128_ms": rows["tinybert"]["b128"],
        "best_under_teacher_over_10_params_dev": max(tenth) if tenth else None,
        "seq_len": meta.max_length, "threads": threads, "hardware": hardware_name("cpu"),
        "wall_s": time.perf_counter() - started,
    }

    table = Table(title=f"{meta.task}, {meta.metric}, max_length {meta.max_length}, {result['hardware']}, "
                        f"{threads} threads")
    for column in ("route", "dev", "test", "params", "b1 ms", "b128 ms"):
        table.add_column(column, justify="left" if column == "route" else "right")
    for name, r in rows.items():
        table.add_row(name, *(_fmt(r.get(k)) for k in ("dev", "test")), f"{r['params'] / 1e6:.2f}M",
                      _fmt(r["b1"], "{:.2f}"), _fmt(r["b128"], "{:.1f}"))
    console.print(table)
    console.print("early exit on dev: " + ", ".join(
        f"t={p['threshold']:g}: {p['score']:.4f} / {p['mean_cells']:.2f} cells / {p['mean_b1_ms']:.2f} ms"
        for p in dev_curve))
    print(json.dumps(result), flush=True)


def _fmt(value, spec: str = "{:.4f}") -> str:
    return "-" if value is None else spec.format(value)


if __name__ == "__main__":
    main()
