"""Models compared are timed in turns, so noise lands on all of them alike; cached figures are reused."""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path

from orchestrator.measure import Timeable, time_models
from workers.latency import side_by_side_timings, timing_plan


def _recording(name: str, log: list, made: list | None = None):
    def call_at(batch: int):
        if made is not None:
            made.append((name, batch))
        return lambda: log.append((name, batch))

    return call_at


def test_models_take_turns_block_by_block_and_each_gets_the_whole_plan():
    log, made = [], []
    names = ["teacher", "a", "b"]
    figures = side_by_side_timings({n: _recording(n, log, made) for n in names}, repeats=10, blocks=5)
    # Each block makes its call anew (an onnxruntime session lives for one block only).
    assert sorted(made) == sorted((n, b) for n in names for b in timing_plan(10) for _ in range(5))
    for batch, (warmup, n) in timing_plan(10).items():
        calls = [name for name, b in log if b == batch]
        per_block = -(-n // 5)
        for name in names:  # every block: the plan's warm-up, then its share of the timed calls
            assert calls.count(name) == 5 * (warmup + per_block)
        # Turns: the model timed changes within every batch size's calls (never one model's whole run),
        # and block k starts with model k.
        runs = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
        assert len(runs) == 5 * len(names)
        assert runs[:: len(names)] == [names[k % 3] for k in range(5)]
    for name in names:
        assert set(figures[name]) == {f"latency_b{b}{s}_ms" for b in (1, 128) for s in ("", "_p95", "_mean")}
        assert 0 <= figures[name]["latency_b1_ms"] <= figures[name]["latency_b1_p95_ms"]


def test_a_slow_model_stays_slow_beside_a_fast_one():
    def sleeper(ms: float):
        return lambda batch: (lambda: time.sleep(ms / 1000))

    figures = side_by_side_timings({"slow": sleeper(4.0), "fast": sleeper(0.5)}, repeats=5, blocks=5)
    assert figures["slow"]["latency_b1_ms"] > 3 * figures["fast"]["latency_b1_ms"]


def _logged_load(name: str, log: Path, threads: int):
    """A model's load, run in the timing process: it writes who was loaded, on how many threads, where."""
    with log.open("a") as f:
        f.write(f"{name} {threads} {os.getpid()}\n")
    return _recording(name, []), {"params": 7, "runtime": "torch"}


def test_time_models_times_the_missing_together_in_a_fresh_process_and_reuses_what_was_timed(tmp_path):
    log = tmp_path / "loads.txt"

    def timeable(name: str) -> Timeable:
        return Timeable(tmp_path / f"{name}.json", partial(_logged_load, name, log))

    def loads() -> list[tuple[str, int]]:
        rows = [line.split() for line in log.read_text().splitlines()] if log.is_file() else []
        log.unlink(missing_ok=True)
        assert all(int(pid) != os.getpid() for *_, pid in rows)  # never in the caller's process
        return sorted((name, int(threads)) for name, threads, _ in rows)

    first = time_models({"a": timeable("a"), "b": timeable("b")}, seq_len=8, repeats=2, threads=1)
    assert loads() == [("a", 1), ("b", 1)]
    assert first["a"]["timed_beside"] == 2 and first["b"]["params"] == 7 and first["a"]["threads"] == 1
    assert json.loads((tmp_path / "a.json").read_text())["latency_b1_ms"] == first["a"]["latency_b1_ms"]

    again = time_models({"a": timeable("a"), "c": timeable("c")}, seq_len=8, repeats=2, threads=1)
    assert loads() == [("c", 1)] and again["a"] == first["a"] and again["c"]["timed_beside"] == 1
    time_models({"a": timeable("a")}, seq_len=16, repeats=2, threads=1)  # another setting: timed anew
    assert loads() == [("a", 1)]


def test_a_script_that_times_at_import_gets_a_one_line_fix_not_a_broken_pool(tmp_path):
    """The timing process is spawned, so it re-imports the caller's script; one without a main guard starts
    the timing again while that process is still starting, and it dies. The caller is told how to fix it."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import json\n"
        "from pathlib import Path\n"
        "from orchestrator.errors import AdarayError\n"
        "from orchestrator.measure import Timeable, time_models\n"
        f"model = Timeable(cache=Path({str(tmp_path / 'latency.json')!r}), load=json.loads)\n"
        "try:\n"
        "    time_models({'m': model}, seq_len=8, repeats=2)\n"
        "except AdarayError as exc:\n"
        "    print('ERROR', exc)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert "ERROR the timing process died" in out.stdout and 'if __name__ == "__main__":' in out.stdout
    assert not (tmp_path / "latency.json").exists()  # nothing half-written
