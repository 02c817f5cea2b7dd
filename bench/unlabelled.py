"""Are in-domain texts without labels worth a student's while? (`task.unlabelled`)

    python bench/unlabelled.py [--job examples/rotten_tomatoes.yaml] [--labelled 2000] [--seeds 4]
                               [--genotype JSON] [--quick]

A small labelled task emulated from the job's: `--labelled` of its train rows keep their labels (as many
of each class, drawn with seed 0), and its other train texts become the `task.unlabelled` file; dev and
test stay the job's. The files are CSVs under the job's workspace (`bench-unlabelled/`). For the task
without the file and with it: prepare, teacher (fine-tuned on the labelled rows alone, so one teacher
serves both), cache, and the genotype (default: the hand cell) retrained as the pipeline retrains, once
a seed, the seeds side by side. Beside them: the teacher and TF-IDF + LR, on the labelled rows.

Ends with one JSON line of flat keys: teacher_dev, teacher_test, tfidf_dev, tfidf_test, unlabelled_texts,
and for each arm (labelled: without the file, unlabelled: with it) {arm}_dev (mean over seeds),
{arm}_dev_std, {arm}_test, {arm}_test_std, {arm}_train_rows, {arm}_retrain_cpu_s. `--quick`: the shared
tiny slice, 64 labelled rows, one seed (figures not comparable).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from search_quality import mean_std, retrain_all  # noqa: E402

from bench_job import HAND_CELL, bench_job, print_figures  # noqa: E402
from orchestrator.baselines import tfidf_logreg  # noqa: E402
from orchestrator.config import JobConfig  # noqa: E402
from orchestrator.data import PreparedData  # noqa: E402
from orchestrator.outer_loop import DataRefs  # noqa: E402
from orchestrator.stages import data_stages, prepare_stage  # noqa: E402
from orchestrator.tasks import TaskConfig  # noqa: E402
from search_space.genotype import Genotype  # noqa: E402
from workers.dataset import read_split_table  # noqa: E402
from workers.teacher import teacher_scores  # noqa: E402


def small_tasks(job: JobConfig, prepared: PreparedData, *, labelled: int) -> tuple[JobConfig, JobConfig]:
    """The job cut to `labelled` train rows (CSV files in its workspace): without, then with, the other train
    texts as task.unlabelled."""
    meta = prepared.meta
    folder = job.workspace_path / "bench-unlabelled" / f"{meta.fingerprint}-{labelled}"
    folder.mkdir(parents=True, exist_ok=True)
    sides = {"text_a": "text", "text_b": "text_pair"} if meta.pair else {"text_a": "text"}
    frames = {}
    for split in ("train", "dev", "test"):
        table = read_split_table(prepared.folder, split).to_pandas()
        frames[split] = table[list(sides)].rename(columns=sides).assign(
            label=[meta.label_names[i] for i in table["label"]])
    train, rng = frames["train"], np.random.default_rng(0)
    per_class = labelled // meta.num_labels
    keep = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(train["label"] == name), size=min(per_class, int((train["label"] == name).sum())),
                   replace=False) for name in meta.label_names]))
    frames["train"] = train.iloc[keep]
    files = {}
    for split, df in frames.items():
        df.to_csv(folder / f"{split}.csv", index=False)
        files[split] = str(folder / f"{split}.csv")
    rest: pd.DataFrame = train.drop(index=train.index[keep])[list(sides.values())]
    rest.to_csv(folder / "unlabelled.csv", index=False)
    task = TaskConfig(name=f"{meta.task}-{labelled}-labelled", files=files, text_column="text",
                      text_pair_column="text_pair" if meta.pair else None, label_column="label",
                      label_names=list(meta.label_names), metric=meta.metric, max_length=meta.max_length)
    plain = job.model_copy(update={"name": f"{job.name}-{labelled}-labelled", "task": task})
    with_texts = task.model_copy(update={"unlabelled": str(folder / "unlabelled.csv")})
    return plain, plain.model_copy(update={"name": f"{plain.name}-unlabelled", "task": with_texts})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "examples" / "rotten_tomatoes.yaml"))
    parser.add_argument("--labelled", type=int, default=2000, help="train rows that keep their labels")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--genotype", default=None, help="a genotype's JSON (default: the hand cell)")
    parser.add_argument("--quick", action="store_true", help="tiny slice, 64 labelled rows, one seed")
    args = parser.parse_args()
    labelled, seeds = (64, 1) if args.quick else (args.labelled, args.seeds)
    genotype = HAND_CELL if args.genotype is None else Genotype.from_json(args.genotype)
    console = Console(stderr=True)
    started = time.perf_counter()

    job = bench_job(args.job, quick=args.quick)
    arms = dict(zip(("labelled", "unlabelled"), small_tasks(job, prepare_stage(job, progress=False),
                                                             labelled=labelled), strict=True))
    out: dict = {"quick": args.quick, "seeds": seeds, "labelled": labelled, "genotype": genotype.to_json()}
    table = Table(title=f"{genotype.to_json()} on {labelled} labelled rows, {seeds} seed(s)")
    for col in ("transfer set", "train rows", "dev", "test", "retrain CPU-s"):
        table.add_column(col, justify="right")
    for arm, small in arms.items():
        prepared, teacher, cache = data_stages(small, progress=not args.quick)
        meta = prepared.meta
        if arm == "labelled":  # one teacher serves both arms: it trains on the labelled rows alone
            scores, tfidf = teacher_scores(teacher.dir, prepared.folder), tfidf_logreg(prepared.folder)
            out.update({"task": meta.task, "metric": meta.metric, "teacher_dev": scores["dev"][meta.metric],
                        "teacher_test": scores["test"][meta.metric], "tfidf_dev": tfidf.dev, "tfidf_test": tfidf.test})
        else:
            out["unlabelled_texts"] = meta.sizes["unlabelled"]
        console.print(f"[bold]{arm}[/]: teacher {teacher.key}, cache {cache.key}, {cache.rows['train']:,} train rows")
        refs = DataRefs(cache_uri=cache.uri, prepared_dir=str(prepared.folder), teacher_dir=str(teacher.dir))
        rows = retrain_all(small, [genotype], refs=refs, cache_key=cache.key, seeds=list(range(seeds)),
                           folder="unlabelled")
        (dev, dev_std), (test, test_std) = mean_std([r["dev"] for r in rows]), mean_std([r["test"] for r in rows])
        cpu, _ = mean_std([r["cpu_s"] for r in rows])
        out.update({f"{arm}_dev": dev, f"{arm}_dev_std": dev_std, f"{arm}_test": test, f"{arm}_test_std": test_std,
                    f"{arm}_train_rows": cache.rows["train"], f"{arm}_retrain_cpu_s": cpu,
                    f"{arm}_dev_per_seed": [r["dev"] for r in rows]})
        table.add_row(arm, f"{cache.rows['train']:,}", f"{dev:.4f} ± {dev_std:.4f}", f"{test:.4f} ± {test_std:.4f}",
                      f"{cpu:.0f}")
    table.add_row("teacher", "", f"{out['teacher_dev']:.4f}", f"{out['teacher_test']:.4f}", "")
    table.add_row("TF-IDF + LR", "", f"{out['tfidf_dev']:.4f}", f"{out['tfidf_test']:.4f}", "")
    console.print(table)
    print_figures(out, started=started)


if __name__ == "__main__":
    main()
