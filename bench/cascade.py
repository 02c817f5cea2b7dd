"""A cascade: a fast student answers the texts it is sure of and hands the rest to a slower, better one.

    python bench/cascade.py [--job examples/rotten_tomatoes.yaml] [--front DIR ...] [--back DIR]
                            [--defer 0.1] [--repeats 150] [--quick]

Fronts (default: the job's champion) and the back (default: the champion of
`examples/rotten_tomatoes_accurate.yaml`, run in the same workspace) are saved students, torch or
exported (`adaray pull` folders, or a run's students/KEY). The threshold is the front's top-class
probability at the `--defer` quantile on search_valid (`workers.cascade.defer_threshold`): set by what the
deferral may cost, never tuned on dev. Each front, the back, each cascade and the teacher are scored on
dev and test, then timed side by side in this process (`workers.latency.side_by_side_timings`, `--repeats`
calls at batch 1, a third at 128) on the same real dev texts in the same order, every model's inputs padded
to the task's max_length as the pipeline times them. Every exported graph runs on one onnxruntime thread
pool (`workers.onnx_export.share_thread_pool`), as a cascade's two graphs must share the cores. A cascade's
cost depends on the text, so the speed-ups are of the mean per call (the median is printed too).

Ends with one JSON line of flat keys: teacher_dev, teacher_test, tfidf_dev, tfidf_test, back_dev,
back_test, back_speedup_b{1,128}, defer, and per front i: front{i}_dev, _test, _speedup_b{1,128},
cascade{i}_dev, _test, _deferred_dev, _deferred_test, _speedup_b{1,128}, _minus_tfidf_points, _threshold.
`--quick` retrains a tiny front (the hand cell) and back (one layer) on the shared slice: no score claim.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench_job import HAND_CELL, job_and_data, print_figures  # noqa: E402
from orchestrator.baselines import tfidf_logreg  # noqa: E402
from orchestrator.config import load_job  # noqa: E402
from search_space.config import TransformerConfig  # noqa: E402
from workers.cascade import cascade_logits, defer_threshold  # noqa: E402
from workers.dataset import load_split, teacher_inputs  # noqa: E402
from workers.latency import hardware_name, pinned_threads, side_by_side_timings  # noqa: E402
from workers.metrics import task_score  # noqa: E402
from workers.onnx_export import share_thread_pool  # noqa: E402
from workers.retrain import retrain_from_paths  # noqa: E402
from workers.student import StudentPredictor  # noqa: E402
from workers.student_files import CONFIG_FILE  # noqa: E402
from workers.teacher import teacher_scores  # noqa: E402

BACK_JOB = ROOT / "examples" / "rotten_tomatoes_accurate.yaml"
QUICK_BACK = {"layers": 1, "hidden": 384, "heads": 12, "ffn": 1536, "init": "teacher", "epochs": 1}


def champion_dir(job_path: str | Path) -> Path:
    """The students/ folder of a job's champion, from its run's status.json."""
    job = load_job(job_path)
    status = job.run_dir / "status.json"
    champion = json.loads(status.read_text()).get("champion") if status.is_file() else None
    if champion is None:
        raise SystemExit(f"{job_path} has no finished run in {job.run_dir}: run `adaray run {job_path}` first, "
                         "or name the student with --front / --back DIR")
    return job.run_dir / "students" / champion


def load_logits(folder: Path):
    """The saved student at `folder`, torch or exported, as a Logits call: (ids (B, T), mask (B, T)) -> (B, C).
    An exported one runs on the process's one onnxruntime pool (`share_thread_pool`), as a cascade's two must."""
    model = StudentPredictor.from_pretrained(folder).model
    return lambda ids, mask: model(ids, mask).logits


def padded(batch: dict, *, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A student batch's ids and mask padded to `length` columns. (B, length) each"""
    extra = length - batch["ids_a"].shape[1]
    return F.pad(batch["ids_a"], (0, extra), value=pad_id), F.pad(batch["mask_a"], (0, extra))


def cascade_maker(front: Path, back: Path, *, threshold: float):
    """Makes the cascade's call anew, on fresh sessions, for each block of the timing."""
    def make():
        f, g = load_logits(front), load_logits(back)
        return lambda ids, mask: cascade_logits(f, g, ids, mask, threshold=threshold)
    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "examples" / "rotten_tomatoes.yaml"))
    parser.add_argument("--front", action="append", default=None, help="a fast student's folder (repeatable)")
    parser.add_argument("--back", default=None, help="the slower, better student's folder")
    parser.add_argument("--defer", type=float, default=0.1,
                        help="the share of search_valid's texts the fronts hand to the back (default 0.1)")
    parser.add_argument("--repeats", type=int, default=150, help="timed calls at batch 1 (a third at 128)")
    parser.add_argument("--quick", action="store_true", help="tiny slice, tiny retrained students: no score claim")
    args = parser.parse_args()
    if not 0 <= args.defer <= 1:
        raise SystemExit(f"--defer must lie in [0, 1] (a share of the texts), got {args.defer}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    if args.quick and (args.front or args.back):
        raise SystemExit("--quick retrains its own students: drop --front / --back")
    if not args.quick:  # missing students stop here, before any stage runs
        fronts = [Path(f) for f in args.front] if args.front else [champion_dir(args.job)]
        back = Path(args.back) if args.back else champion_dir(BACK_JOB)
        for folder in (*fronts, back):
            if not (folder / CONFIG_FILE).is_file():
                raise SystemExit(f"{folder} is not a saved student (no {CONFIG_FILE})")
        labels = {f: json.loads((f / CONFIG_FILE).read_text()).get("label_names") for f in (*fronts, back)}
        for folder in fronts:
            if labels[folder] != labels[back]:
                raise SystemExit(f"{folder} has labels {labels[folder]}, the back {back} {labels[back]}: a "
                                 "cascade's students must be of one task")
    console = Console(stderr=True)
    started = time.perf_counter()

    job, prepared, teacher, cache = job_and_data(args.job, quick=args.quick)
    meta = prepared.meta
    if meta.pair:
        raise SystemExit(f"{meta.task} classifies text pairs; this bench cascades single texts")
    if args.quick:
        cfg = job.retrain.model_copy(update={"epochs": 1, "min_steps": 0, "max_train_examples": 256,
                                             "exit_max_drop": None})
        out = job.run_dir / "bench-cascade"

        def retrained(arch, name: str) -> Path:
            console.print(f"retraining the quick {name} ...")
            return retrain_from_paths(arch=arch, space=job.space, cfg=cfg, cache_uri=cache.uri,
                                      prepared_dir=prepared.folder, teacher_dir=teacher.dir, out_dir=out / name
                                      ).student_dir

        fronts, back = [retrained(HAND_CELL, "front")], retrained(TransformerConfig.from_dict(QUICK_BACK), "back")

    splits = {name: load_split(prepared.folder, name) for name in ("search_valid", "dev", "test")}
    threads = torch.get_num_threads()
    share_thread_pool(threads)  # before the first session: every graph here runs on one pool of `threads`

    @torch.inference_mode()
    def outputs(logits, split) -> torch.Tensor:  # (N, C) probabilities
        return torch.cat([logits(b["ids_a"], b["mask_a"]).softmax(-1) for b in split.batches(batch_size=128)])

    def score(predictions: torch.Tensor, split) -> float:
        return task_score(predictions, split.labels, num_labels=meta.num_labels, metric=meta.metric)

    back_fn = load_logits(back)
    rows = {"back": {n: score(outputs(back_fn, splits[n]).argmax(-1), splits[n]) for n in ("dev", "test")}}
    thresholds = []
    for i, front in enumerate(fronts):
        front_fn = load_logits(front)
        p = {n: outputs(front_fn, s) for n, s in splits.items()}
        threshold = defer_threshold(p["search_valid"], defer=args.defer)
        thresholds.append(threshold)
        rows[f"front{i}"] = {n: score(p[n].argmax(-1), splits[n]) for n in ("dev", "test")}
        rows[f"cascade{i}"] = {"threshold": threshold}
        for n in ("dev", "test"):
            with torch.inference_mode():
                routed = [cascade_logits(front_fn, back_fn, b["ids_a"], b["mask_a"], threshold=threshold)
                          for b in splits[n].batches(batch_size=128)]
            rows[f"cascade{i}"] |= {n: score(torch.cat([lg for lg, _ in routed]).argmax(-1), splits[n]),
                                    f"deferred_{n}": float(torch.cat([d for _, d in routed]).float().mean())}
        del front_fn
    del back_fn  # an onnxruntime session left alive spins beside the models timed below

    console.print("timing the teacher, the back, each front and each cascade side by side on dev's texts ...")
    dev, length = splits["dev"], meta.max_length
    batches = {b: [dev.batch(torch.arange(s, s + b) % len(dev)) for s in range(0, len(dev), b)] for b in (1, 128)}
    special = {"cls_id": meta.cls_id, "sep_id": meta.sep_id, "pad_id": meta.pad_id}
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    with pinned_threads(threads):
        teacher_model = AutoModelForSequenceClassification.from_pretrained(str(teacher.dir)).eval()

        def teacher_feed(batch: dict) -> dict:
            inputs = teacher_inputs(batch, **special)
            extra = length - inputs["input_ids"].shape[1]
            return {k: F.pad(v, (0, extra), value=meta.pad_id if k == "input_ids" else 0) for k, v in inputs.items()}

        student_args = {b: [padded(x, length=length, pad_id=meta.pad_id) for x in xs] for b, xs in batches.items()}
        args_of = {"teacher": {b: [(teacher_feed(x),) for x in xs] for b, xs in batches.items()}}
        # Each call made anew in each block (an onnxruntime session left alive spins beside the next model).
        makers = {"teacher": lambda: (lambda feed: teacher_model(**feed)), "back": lambda: load_logits(back)}
        for i, front in enumerate(fronts):
            makers[f"front{i}"] = lambda front=front: load_logits(front)
            makers[f"cascade{i}"] = cascade_maker(front, back, threshold=thresholds[i])
        # Every model reads the same texts in the same order, each through its own cycle.
        rounds = {name: {b: itertools.cycle(xs) for b, xs in args_of.get(name, student_args).items()}
                  for name in makers}

        def call_at(name: str):
            def at(batch: int):
                fn, texts = makers[name](), rounds[name][batch]
                return lambda: fn(*next(texts))
            return at

        timed = side_by_side_timings({name: call_at(name) for name in rounds}, repeats=args.repeats)

    t_scores, tfidf, t = teacher_scores(teacher.dir, prepared.folder), tfidf_logreg(prepared.folder), timed["teacher"]
    out = {"quick": args.quick, "metric": meta.metric, "defer": args.defer, "repeats": args.repeats,
           "teacher_dev": t_scores["dev"][meta.metric], "teacher_test": t_scores["test"][meta.metric],
           "tfidf_dev": tfidf.dev, "tfidf_test": tfidf.test, "back": str(back),
           **{f"teacher_b{b}_mean_ms": t[f"latency_b{b}_mean_ms"] for b in (1, 128)}}
    table = Table(title=f"{meta.task}: dev/test {meta.metric}, {hardware_name('cpu')}, {threads} threads, "
                        f"max_length {length}, deferring {args.defer:.0%} of search_valid")
    for col in ("model", "dev", "test", "deferred dev / test", "b1 ms mean / median", "b128 ms mean / median",
                "speed-up b1 / b128"):
        table.add_column(col, justify="left" if col == "model" else "right", overflow="fold")
    table.add_row("TF-IDF + LR", f"{tfidf.dev:.4f}", f"{tfidf.test:.4f}", "", "", "", "")
    for name in rounds:
        r, f = rows.get(name, {"dev": out["teacher_dev"], "test": out["teacher_test"]}), timed[name]
        for b in (1, 128):
            out[f"{name}_speedup_b{b}"] = t[f"latency_b{b}_mean_ms"] / f[f"latency_b{b}_mean_ms"]
            out[f"{name}_b{b}_mean_ms"], out[f"{name}_b{b}_ms"] = f[f"latency_b{b}_mean_ms"], f[f"latency_b{b}_ms"]
        out |= {f"{name}_{k}": v for k, v in r.items()}
        if name.startswith("cascade"):
            out[f"{name}_minus_tfidf_points"] = 100 * (r["dev"] - tfidf.dev)
        if name.startswith("front"):
            out[f"{name}_dir"] = str(fronts[int(name[5:])])
        labels = {"teacher": "teacher (torch)", "back": f"back {back.name}",
                  **{f"front{i}": f"front {d.name}" for i, d in enumerate(fronts)},
                  **{f"cascade{i}": f"cascade: front {d.name} -> back" for i, d in enumerate(fronts)}}
        table.add_row(labels[name], f"{r['dev']:.4f}", f"{r['test']:.4f}",
                      f"{r['deferred_dev']:.1%} / {r['deferred_test']:.1%}" if "deferred_dev" in r else "",
                      f"{f['latency_b1_mean_ms']:.2f} / {f['latency_b1_ms']:.2f}",
                      f"{f['latency_b128_mean_ms']:.1f} / {f['latency_b128_ms']:.1f}",
                      f"{out[f'{name}_speedup_b1']:.1f}x / {out[f'{name}_speedup_b128']:.1f}x")
    console.print(table)
    print_figures(out, started=started)


if __name__ == "__main__":
    main()
