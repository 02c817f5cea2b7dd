"""A cascade: a fast student answers the texts it is sure of and hands the rest to a slower, better one.

    python bench/cascade.py [--job examples/rotten_tomatoes.yaml] [--front DIR ...] [--back DIR]
                            [--defer 0.1] [--repeats 150] [--quick]

Fronts (default: the job's champion) and the back (default: the champion of
`examples/rotten_tomatoes_accurate.yaml`, run in the same workspace) are saved students, torch or
exported (`adaray pull` folders, or a run's students/KEY). Each cascade is built as the job builds one
(`workers.cascade_student.make_cascade`): the threshold is the front's top-class probability at the `--defer`
quantile on search_valid, set by what the deferral may cost, never tuned on dev, and the scores are the
cascade's as `predict` serves it. Then the teacher, the back, each front and each cascade are timed side by
side as the job times them (`orchestrator.measure.time_models`, `--repeats` calls at batch 1, a third at 128,
in a fresh process, every exported graph on one onnxruntime pool, as a cascade's two graphs must share the
cores): a cascade on dev's texts in order, since what it costs depends on the text, so every speed-up is of
the mean per call (the median is printed too).

Ends with one JSON line of flat keys: teacher_dev, teacher_test, tfidf_dev, tfidf_test, back_dev,
back_test, back_speedup_b{1,128}, defer, and per front i: front{i}_dev, _test, _speedup_b{1,128},
cascade{i}_dev, _test, _deferred_dev, _deferred_test, _speedup_b{1,128}, _minus_tfidf_points, _threshold.
`--quick` retrains a tiny front (the hand cell) and back (one layer) on the shared slice: no score claim.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench_job import HAND_CELL, QUICK_MEMBER, job_and_data, print_figures  # noqa: E402
from orchestrator.baselines import tfidf_logreg  # noqa: E402
from orchestrator.config import load_job  # noqa: E402
from orchestrator.measure import Timeable, cascade_timeable, student_timeable, teacher_timeable, time_models  # noqa: E402
from search_space.config import TransformerConfig  # noqa: E402
from workers.cascade_student import check_pairable, make_cascade  # noqa: E402
from workers.latency import hardware_name  # noqa: E402
from workers.retrain import retrain_from_paths  # noqa: E402
from workers.student_files import CONFIG_FILE, METRICS_FILE  # noqa: E402
from workers.teacher import teacher_scores  # noqa: E402

BACK_JOB = ROOT / "examples" / "rotten_tomatoes_accurate.yaml"


def champion_dir(job_path: str | Path) -> Path:
    """The students/ folder of a job's champion, from its run's status.json."""
    job = load_job(job_path)
    status = job.run_dir / "status.json"
    champion = json.loads(status.read_text()).get("champion") if status.is_file() else None
    if champion is None:
        raise SystemExit(f"{job_path} has no finished run in {job.run_dir}: run `adaray run {job_path}` first, "
                         "or name the student with --front / --back DIR")
    return job.run_dir / "students" / champion


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
        for folder in fronts:  # labels, inputs and tokenizer, as make_cascade checks them
            try:
                check_pairable(folder, back)
            except ValueError as e:
                raise SystemExit(str(e)) from None
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

        fronts, back = [retrained(HAND_CELL, "front")], retrained(TransformerConfig.from_dict(QUICK_MEMBER), "back")

    built = job.run_dir / "bench-cascade" / "cascades"  # scratch: rebuilt each run, at this --defer
    shutil.rmtree(built, ignore_errors=True)
    rows = {"back": json.loads((back / METRICS_FILE).read_text())}
    for i, front in enumerate(fronts):  # the job's own build: threshold on search_valid, scored as served
        rows[f"front{i}"] = json.loads((front / METRICS_FILE).read_text())
        rows[f"cascade{i}"] = make_cascade(front, back, built / f"cascade{i}", defer=args.defer,
                                           prepared_dir=prepared.folder)
    rows = {name: {"dev": r["dev_metric"], "test": r["test_metric"],
                   **({"threshold": r["threshold"], "deferred_dev": r["deferred_dev"], "deferred_test": r["deferred_test"]}
                      if "threshold" in r else {})} for name, r in rows.items()}

    console.print("timing the teacher, the back, each front and each cascade side by side ...")
    length, scratch = meta.max_length, built / "timings"
    models = {"teacher": teacher_timeable(teacher.dir, seq_len=length, cache_dir=scratch),
              "back": Timeable(scratch / "back.json", student_timeable(back, seq_len=length).load)}
    for i, front in enumerate(fronts):  # fresh figures: scratch caches, every graph on one pool (a cascade's must)
        models[f"front{i}"] = Timeable(scratch / f"front{i}.json", student_timeable(front, seq_len=length).load)
        models[f"cascade{i}"] = cascade_timeable(built / f"cascade{i}", seq_len=length, prepared_dir=prepared.folder)
    timed = time_models(models, seq_len=length, repeats=args.repeats)
    threads = timed["teacher"]["threads"]

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
    for name in models:
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
