"""Does a bigger teacher-labelled transfer set make a better student? (Tang et al., arXiv 1903.12136)

    python bench/transfer_set.py [--job examples/rotten_tomatoes.yaml] [--quick] [--copies 0 1 4 8] [--seeds 2]

For each number of augmented copies per train example, on the job's data and splits:
  1. the teacher cache with that many copies: its build time (wall seconds, the job's cache actors;
     null when it was already built) and its train rows;
  2. the fixed hand cell (bench/bench_job.py's HAND_CELL) retrained as the pipeline retrains,
     once per seed, the seeds side by side: dev/test score in the task's metric, CPU-seconds.
Beside them: the teacher and TF-IDF + LR on the same splits. Ends with one JSON line of flat keys:
teacher_dev, tfidf_dev, and per copies N: copiesN_dev (mean), copiesN_dev_std, copiesN_test,
copiesN_cache_s, copiesN_train_rows, copiesN_retrain_cpu_s. `--quick`: the shared tiny slice,
copies 0 and 1, one seed (figures not comparable).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from search_quality import mean_std, retrain_all  # noqa: E402

from bench_job import HAND_CELL, bench_job, print_figures  # noqa: E402
from orchestrator.baselines import tfidf_logreg  # noqa: E402
from orchestrator.config import JobConfig  # noqa: E402
from orchestrator.outer_loop import DataRefs  # noqa: E402
from orchestrator.stages import cache_stage, prepare_stage, teacher_stage  # noqa: E402
from workers.teacher import teacher_scores  # noqa: E402


def with_copies(job: JobConfig, copies: int) -> JobConfig:
    augment = job.cache.augment.model_copy(update={"copies": copies})
    return job.model_copy(update={"cache": job.cache.model_copy(update={"augment": augment})})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "examples" / "rotten_tomatoes.yaml"))
    parser.add_argument("--quick", action="store_true", help="tiny slice, copies 0 and 1, one seed")
    parser.add_argument("--copies", type=int, nargs="+", default=[0, 1, 4, 8])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    copies_list, seeds = ([0, 1], 1) if args.quick else (args.copies, args.seeds)
    console = Console(stderr=True)
    started = time.perf_counter()

    job = bench_job(args.job, quick=args.quick)
    # Not data_stages: every cache below is built here, so that its build is timed.
    prepared = prepare_stage(job, progress=not args.quick)
    teacher = teacher_stage(job, prepared, progress=not args.quick)
    meta = prepared.meta
    t_scores = teacher_scores(teacher.dir, prepared.folder)
    tfidf = tfidf_logreg(prepared.folder)
    out: dict = {"quick": args.quick, "metric": meta.metric, "seeds": seeds, "task": meta.task,
                 "teacher_dev": t_scores["dev"][meta.metric], "teacher_test": t_scores["test"][meta.metric],
                 "tfidf_dev": tfidf.dev, "tfidf_test": tfidf.test}
    table = Table(title=f"{meta.task}: the hand cell by transfer-set size, dev/test {meta.metric}, {seeds} seed(s)")
    for col in ("copies", "train rows", "cache build s", "dev", "test", "retrain CPU-s"):
        table.add_column(col, justify="right")
    for copies in copies_list:
        cjob = with_copies(job, copies)
        t0 = time.perf_counter()
        cache = cache_stage(cjob, prepared, teacher, progress=not args.quick)
        cache_s = None if cache.cache_hit else time.perf_counter() - t0
        console.print(f"[bold]copies {copies}[/]: cache {cache.key}" + (" (built before)" if cache.cache_hit else
                                                                          f" built in {cache_s:.0f} s"))
        refs = DataRefs(cache_uri=cache.uri, prepared_dir=str(prepared.folder), teacher_dir=str(teacher.dir))
        rows = retrain_all(cjob, [HAND_CELL], refs=refs, cache_key=cache.key, seeds=list(range(seeds)), folder="transfer")
        dev, dev_std = mean_std([r["dev"] for r in rows])
        test, _ = mean_std([r["test"] for r in rows])
        cpu, _ = mean_std([r["cpu_s"] for r in rows])
        n = f"copies{copies}"
        out.update({f"{n}_dev": dev, f"{n}_dev_std": dev_std, f"{n}_test": test, f"{n}_cache_s": cache_s,
                    f"{n}_train_rows": cache.rows["train"], f"{n}_retrain_cpu_s": cpu,
                    f"{n}_dev_per_seed": [r["dev"] for r in rows]})
        table.add_row(str(copies), f"{cache.rows['train']:,}", "-" if cache_s is None else f"{cache_s:.0f}",
                      f"{dev:.4f} ± {dev_std:.4f}", f"{test:.4f}", f"{cpu:.0f}")
        console.print(f"    dev {dev:.4f} ± {dev_std:.4f}, test {test:.4f}, {cpu:.0f} CPU-s a retrain")
    table.add_row("teacher", "", "", f"{out['teacher_dev']:.4f}", f"{out['teacher_test']:.4f}", "")
    table.add_row("TF-IDF + LR", "", "", f"{tfidf.dev:.4f}", f"{tfidf.test:.4f}", f"{tfidf.cpu_seconds:.0f}")
    console.print(table)
    print_figures(out, started=started)


if __name__ == "__main__":
    main()
