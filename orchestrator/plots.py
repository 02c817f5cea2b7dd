"""PNG pictures: the Pareto plot of retrained students, a derived cell and the teacher's layer probes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator.selection import Candidate  # noqa: E402
from search_space.genotype import Genotype  # noqa: E402
from workers.local_files import write_file_atomic  # noqa: E402
from workers.metrics import METRIC_NAMES  # noqa: E402
from workers.probes import PROBES_JSON  # noqa: E402

PROBES_PLOT = "probes.png"
ROUTE_MARKERS = ("o", "^", "s", "D", "v", "P")


def pareto_plot(
    candidates: list[Candidate], front: list[Candidate], champion: Candidate, path: Path, *,
    teacher_score: float | None = None, teacher_latency_ms: float | None = None, latency_batch: int = 1,
    metric_name: str = "accuracy",
) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    on_front = {c.key for c in front}
    size = lambda cs: [30 + 200 * c.params / max(x.params for x in candidates) for c in cs]  # noqa: E731
    routes = sorted({c.route for c in candidates})
    for route, marker in zip(routes, itertools.cycle(ROUTE_MARKERS), strict=False):  # one marker per route, colour: on the front
        for group, colour, what in ((False, "0.7", "dominated"), (True, "tab:blue", "Pareto front")):
            cs = [c for c in candidates if c.route == route and (c.key in on_front) == group]
            if cs:
                ax.scatter([c.latency_ms for c in cs], [100 * c.score for c in cs], s=size(cs), c=colour,
                           marker=marker, label=f"{what}: {route}" if len(routes) > 1 else what)
    ax.scatter([champion.latency_ms], [100 * champion.score], s=260, facecolors="none", edgecolors="tab:red",
               linewidths=2, label="champion")
    if teacher_score is not None:
        ax.axhline(100 * teacher_score, ls="--", c="tab:green", lw=1, label=f"teacher {metric_name}")
    if teacher_latency_ms is not None:
        ax.axvline(teacher_latency_ms, ls=":", c="tab:green", lw=1, label="teacher latency")
    ax.set_xscale("log")
    ax.set_xlabel(f"mean latency per call, batch {latency_batch} (ms, log)")
    ax.set_ylabel(f"dev {metric_name} (%)")
    ax.set_title("Retrained students (marker size = parameters)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def cell_plot(genotype: Genotype, path: Path) -> Path:
    """The derived cell as a small DAG: inputs c_{k-2}, c_{k-1}, intermediate nodes, output."""
    names = ["c_{k-2}", "c_{k-1}"] + [f"n{j}" for j in range(len(genotype.nodes))]
    x = {0: 0.0, 1: 0.0}
    y = {0: 0.75, 1: 0.25}
    for j in range(len(genotype.nodes)):
        x[2 + j] = 1.0 + j
        y[2 + j] = 0.5 + (0.25 if j % 2 else -0.25) * (j > 0)
    out = len(names)
    x[out], y[out] = 1.0 + len(genotype.nodes), 0.5
    fig, ax = plt.subplots(figsize=(2.2 * (len(genotype.nodes) + 2), 3.2), dpi=120)
    for j, edges in enumerate(genotype.nodes):
        for op, src in edges:
            ax.annotate("", xy=(x[2 + j], y[2 + j]), xytext=(x[src], y[src]),
                        arrowprops={"arrowstyle": "->", "color": "0.4"})
            ax.text((x[src] + x[2 + j]) / 2, (y[src] + y[2 + j]) / 2, op, fontsize=8, ha="center",
                    bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "0.6"})
        ax.annotate("", xy=(x[out], y[out]), xytext=(x[2 + j], y[2 + j]),
                    arrowprops={"arrowstyle": "->", "color": "tab:blue", "ls": "--"})
    for i, name in enumerate([*names, "out (attn)"]):
        ax.text(x[i], y[i], name, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "circle", "fc": "lightblue" if i < 2 else "white", "ec": "0.3"})
    ax.set_xlim(-0.5, x[out] + 0.5)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title(f"derived cell (depth K = {genotype.depth})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def probe_plot(teacher_dir: Path) -> Path:
    """probes.png beside the teacher's probes.json (drawn once; a derived file, not part of the
    teacher's fingerprint)."""
    path = Path(teacher_dir) / PROBES_PLOT
    if path.is_file():
        return path
    report = json.loads((Path(teacher_dir) / PROBES_JSON).read_text())
    scores, metric = report["dev_scores"], METRIC_NAMES[report["metric"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(scores)), scores, marker="o", label="layer probe")
    ax.axhline(report["teacher_dev_score"], color="grey", linestyle="--", label="teacher head")
    ax.set_xticks(range(len(scores)), report["layers"], rotation=30, ha="right")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title("Linear probes on the teacher's layers")
    ax.legend()
    fig.tight_layout()
    write_file_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path
