"""The small-transformer family against the teacher and TF-IDF + LR: each member's score and speed.

    python bench/members.py [--job examples/rotten_tomatoes.yaml] [--member JSON ...] [--quick]

On the job's data stages (cache hits when done), each member (default: the job's `small_transformers`;
`--member` replaces them, as in a job's list) is retrained as the pipeline retrains its small
transformers (Ray tasks side by side, kept on disk by key, so a rerun reuses them) and exported as an
onnxruntime int8 graph (the job's `onnx-int8` variant). Then, with Ray stopped, the teacher (torch)
and every member under torch and as its int8 graph are timed side by side in one fresh process
(`orchestrator.measure.time_models`; nothing reused from earlier timings). Ends with one JSON line of
flat keys: teacher_dev, teacher_test, teacher_b1_ms, teacher_b128_ms, tfidf_dev, tfidf_test, and per
member i (in order): member{i}_name, _params, _dev, _test, _b1_ms, _b128_ms, _speedup_b1,
_speedup_b128 (the teacher's median over the member's), the same six with _int8 (member{i}_int8_dev,
...: its onnxruntime int8 graph) and _int8_minus_tfidf_points (dev). `--quick`: the shared tiny
slice and one 1-layer member for one epoch (figures not comparable).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench_job import QUICK_MEMBER, job_and_data, print_figures  # noqa: E402
from cluster.connect import shutdown_if_owned  # noqa: E402
from orchestrator.baselines import tfidf_logreg  # noqa: E402
from orchestrator.config import load_job  # noqa: E402
from orchestrator.measure import Timeable, student_timeable, teacher_timeable, time_models  # noqa: E402
from orchestrator.outer_loop import DataRefs  # noqa: E402
from orchestrator.retrain_stage import make_variants, retrain_students, transformer_specs, variant_specs  # noqa: E402
from search_space.config import TransformerConfig  # noqa: E402
from workers.latency import hardware_name  # noqa: E402
from workers.teacher import teacher_scores  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "examples" / "rotten_tomatoes.yaml"))
    parser.add_argument("--member", action="append", default=None,
                        help="a member's settings as JSON, as in a job's small_transformers (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny slice, one 1-layer member: no score claim")
    args = parser.parse_args()
    members = [json.dumps(QUICK_MEMBER)] if args.quick else args.member
    try:  # bad settings stop here, before any stage runs
        archs = None if members is None else [TransformerConfig.from_dict(json.loads(m)) for m in members]
    except (ValueError, TypeError) as e:
        raise SystemExit(f"--member: {e} (give a JSON object such as '{json.dumps(QUICK_MEMBER)}')") from None
    if archs is None and not load_job(args.job).small_transformers:
        raise SystemExit(f"{args.job} has no small_transformers: name members with --member JSON")
    console = Console(stderr=True)
    started = time.perf_counter()

    job, prepared, teacher, cache = job_and_data(args.job, quick=args.quick)
    update = {"variants": ["onnx-int8"], **({} if archs is None else {"small_transformers": archs})}
    if args.quick:
        update["retrain"] = job.retrain.model_copy(update={"max_train_examples": 256, "min_steps": 20,
                                                           "latency_repeats": 5})
    job = job.model_copy(update=update)
    meta = prepared.meta
    refs = DataRefs(cache_uri=cache.uri, prepared_dir=str(prepared.folder), teacher_dir=str(teacher.dir))

    specs = transformer_specs(job, cache_key=cache.key)
    names = {s.key: arch.name for s, arch in zip(specs, job.small_transformers)}
    console.print(f"retraining {', '.join(names.values())} (side by side; those on disk are reused) ...")
    metrics = retrain_students(job, specs, refs=refs, on_done=lambda spec, m, hit: console.print(
        f"  {names[spec.key]} ({spec.key}): dev {m['dev_metric']:.4f}{', on disk' if hit else ''}"))
    variants = variant_specs(job, specs)
    metrics |= make_variants(variants, refs=refs)
    shutdown_if_owned()  # timed as the pipeline times its students: without Ray's daemons beside them

    console.print("timing the teacher and every member side by side ...")
    seq = meta.max_length
    with tempfile.TemporaryDirectory(prefix="adaray-members-") as tmp:
        models = {"teacher": teacher_timeable(teacher.dir, seq_len=seq, cache_dir=Path(tmp))}
        models |= {s.key: Timeable(Path(tmp) / f"{s.key}.json", student_timeable(s.out_dir, seq_len=seq).load)
                   for s in specs + variants}
        timed = time_models(models, seq_len=seq, repeats=job.retrain.latency_repeats)

    t_scores, tfidf, t = teacher_scores(teacher.dir, prepared.folder), tfidf_logreg(prepared.folder), timed["teacher"]
    out: dict = {"quick": args.quick, "metric": meta.metric, "teacher_dev": t_scores["dev"][meta.metric],
                 "teacher_test": t_scores["test"][meta.metric], "teacher_b1_ms": t["latency_b1_ms"],
                 "teacher_b128_ms": t["latency_b128_ms"], "tfidf_dev": tfidf.dev, "tfidf_test": tfidf.test}
    table = Table(title=f"{meta.task}: dev/test {meta.metric}, {hardware_name('cpu')}, max_length {seq}")
    for col in ("model", "dev", "test", "params", "b1 ms", "b128 ms", "speed-up"):
        table.add_column(col, justify="left" if col == "model" else "right", overflow="fold")
    table.add_row("teacher (torch)", f"{out['teacher_dev']:.4f}", f"{out['teacher_test']:.4f}",
                  f"{t['params'] / 1e6:.2f}M", f"{t['latency_b1_ms']:.2f}", f"{t['latency_b128_ms']:.1f}", "1")
    table.add_row("TF-IDF + LR", f"{tfidf.dev:.4f}", f"{tfidf.test:.4f}", "-", "-", "-", "-")
    for i, (arch, spec, variant) in enumerate(zip(job.small_transformers, specs, variants)):
        key = f"member{i}"
        out[f"{key}_name"] = arch.name
        for suffix, s in (("", spec), ("_int8", variant)):
            m, f = metrics[s.key], timed[s.key]
            out |= {f"{key}{suffix}_dev": m["dev_metric"], f"{key}{suffix}_test": m.get("test_metric"),
                    f"{key}{suffix}_b1_ms": f["latency_b1_ms"], f"{key}{suffix}_b128_ms": f["latency_b128_ms"]}
            for b in (1, 128):  # the teacher's median over this model's
                out[f"{key}{suffix}_speedup_b{b}"] = t[f"latency_b{b}_ms"] / f[f"latency_b{b}_ms"]
            test = out[f"{key}{suffix}_test"]
            table.add_row(f"{arch.name} ({f['runtime']})", f"{m['dev_metric']:.4f}",
                          "-" if test is None else f"{test:.4f}", f"{f['params'] / 1e6:.2f}M",
                          f"{f['latency_b1_ms']:.2f}", f"{f['latency_b128_ms']:.1f}",
                          f"{out[f'{key}{suffix}_speedup_b1']:.1f}x / {out[f'{key}{suffix}_speedup_b128']:.1f}x")
        out[f"{key}_params"] = timed[spec.key]["params"]
        out[f"{key}_int8_minus_tfidf_points"] = 100 * (out[f"{key}_int8_dev"] - tfidf.dev)
    console.print(table)
    print_figures(out, started=started)


if __name__ == "__main__":
    main()
