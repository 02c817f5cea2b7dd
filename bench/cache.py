"""The teacher cache's worth: examples/s of a student's KD epoch with targets from three places.

    python bench/cache.py [--job examples/rotten_tomatoes.yaml] [--quick] [--examples N]

Runs the data stages of the job (prepare → teacher → cache; cache hits when done), then trains
one small fixed student (embed_dim 128, depth 2) with the AdaBERT KD loss (logits + probe hints)
on the same train rows, in the same order, three ways:
  (a) online:    the teacher runs its forward pass in the loop for every batch;
  (b) cached:    targets from the Arrow cache (open_cache(...).split("train"), memory-mapped);
  (c) in memory: the same targets as private in-memory tensors (TargetSplit.materialize()).
All three are timed the same way: three alternating rounds, the median round of each counts,
and the spread of its rounds is printed (the machine may be shared). Ends with one JSON line. Figures, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench_job import job_and_data  # noqa: E402
from search_space.config import SearchSpaceConfig  # noqa: E402
from search_space.genotype import Genotype  # noqa: E402
from search_space.student import Student  # noqa: E402
from workers.cache import open_cache  # noqa: E402
from workers.dataset import TargetSplit, load_split, teacher_inputs  # noqa: E402
from workers.losses import gold_ce, kd_loss  # noqa: E402
from workers.teacher import load_teacher  # noqa: E402
from workers.training import adamw  # noqa: E402

GENOTYPE = Genotype(depth=2, nodes=(
    (("conv_3", 0), ("max_pool_3", 1)),
    (("dil_conv_3", 2), ("identity", 0)),
    (("conv_5", 3), ("avg_pool_3", 1)),
))
BATCH, GAMMA, TEMPERATURE = 64, 0.8, 1.0


Targets = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def kd_throughput(split: TargetSplit, targets: Targets, *, vocab_size: int, num_labels: int, pad_id: int,
                  min_seconds: float) -> float:
    """Examples/s of KD training epochs over `split` (whole epochs, at least `min_seconds`)."""
    torch.manual_seed(0)
    student = Student(GENOTYPE, space=SearchSpaceConfig(embed_dim=128), vocab_size=vocab_size, num_labels=num_labels,
                      pad_id=pad_id)
    opt = adamw(student.parameters(), lr=2e-3)

    def step(batch: dict[str, torch.Tensor]) -> None:
        batch = targets(batch)
        out = student(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b"))
        kd = kd_loss(out.logits, student_probes=out.cell_probe_logits, teacher_logits=batch["teacher_logits"],
                     teacher_probe_logits=batch["probe_logits"], labels=batch["labels"], temperature=TEMPERATURE)
        loss = (1 - GAMMA) * gold_ce(out.logits, batch["labels"]) + GAMMA * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(split.batch(torch.arange(min(BATCH, len(split)))))  # warm-up: allocator, first-call costs
    examples, epoch, start = 0, 0, time.perf_counter()
    while True:
        for batch in split.batches(batch_size=BATCH, shuffle=True, seed=epoch):
            step(batch)
            examples += len(batch["labels"])
        epoch += 1
        if time.perf_counter() - start >= min_seconds:
            return examples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default=str(ROOT / "examples" / "rotten_tomatoes.yaml"))
    parser.add_argument("--quick", action="store_true", help="a small slice; finishes in about a minute")
    parser.add_argument("--examples", type=int, default=None, help="train rows to time (default: 2048, quick: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: what a Tune trial reserving one CPU gets)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    started = time.perf_counter()

    job, prepared, teacher, cache = job_and_data(args.job, quick=args.quick)
    meta = prepared.meta
    reader = open_cache(cache.uri)
    rows = min(args.examples or (10**9 if args.quick else 2048), meta.sizes["train"])
    cached = reader.split("train").subset(slice(0, rows))  # copy 0: the prepared rows, in order
    in_memory = cached.materialize()
    plain = load_split(prepared.folder, "train").subset(slice(0, rows))
    if not torch.equal(plain.example_ids, cached.example_ids):
        raise SystemExit("cache rows do not line up with the prepared split")
    common = {"vocab_size": meta.vocab_size, "num_labels": meta.num_labels, "pad_id": meta.pad_id}

    model = load_teacher(teacher.dir)

    @torch.inference_mode()
    def online(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(**teacher_inputs(batch, cls_id=meta.cls_id, sep_id=meta.sep_id, pad_id=meta.pad_id))
        return {**batch, "teacher_logits": out.logits.clone(), "probe_logits": out.probe_logits.clone()}

    def stored(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch

    seconds = 2.0 if args.quick else 8.0
    console.print(f"timing KD epochs over {rows} train rows (batch {BATCH}) ...")
    arms = {"online": (plain, online), "cached": (cached, stored), "in_memory": (in_memory, stored)}
    rounds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(3):  # every arm the same way: alternating rounds, the median round of each counts
        for name, (split, targets) in arms.items():
            rounds[name].append(kd_throughput(split, targets, min_seconds=seconds, **common))
    speed = {name: statistics.median(values) for name, values in rounds.items()}
    spread = {name: (max(values) - min(values)) / statistics.median(values) for name, values in rounds.items()}

    shards = reader.manifest["shards"]
    bytes_per_1k = 1000 * sum(s["bytes"] for s in shards) / sum(s["rows"] for s in shards)
    table = Table(title=f"KD epochs of a student (embed 128, depth 2) on {meta.task}: {rows} rows, "
                        f"{args.threads} thread(s)")
    for column in ("targets from", "examples/s", "vs online", "vs in-memory"):
        table.add_column(column, justify="left" if column == "targets from" else "right")
    labels = {"online": "(a) teacher forward in the loop", "cached": "(b) Arrow cache (memory-mapped)",
              "in_memory": "(c) in-memory tensors"}
    for name, value in speed.items():
        table.add_row(labels[name], f"{value:,.0f}", f"{value / speed['online']:.1f}x",
                      f"{value / speed['in_memory']:.2f}x")
    console.print(table)
    console.print(f"cache: {bytes_per_1k / 1024:,.1f} KiB per 1k rows ({len(shards)} shards, key {cache.key}); "
                  f"total {time.perf_counter() - started:.0f} s")
    print(json.dumps({
        "online_examples_per_s": round(speed["online"], 1),
        "cached_examples_per_s": round(speed["cached"], 1),
        "in_memory_examples_per_s": round(speed["in_memory"], 1),
        "speedup_vs_online": round(speed["cached"] / speed["online"], 2),
        "overhead_vs_in_memory": round(speed["in_memory"] / speed["cached"] - 1, 4),
        "bytes_per_1k_examples": round(bytes_per_1k),
        **{f"{name}_round_spread": round(value, 3) for name, value in spread.items()},
    }))


if __name__ == "__main__":
    main()
