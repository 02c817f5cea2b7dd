"""One differentiable AdaBERT search: the supernet trained against the teacher cache.

First-order alternating updates (DARTS): each step updates the supernet's weights on a batch
from one half of train, then alpha and the depth logits on a batch from the other half, both
under L = (1 - gamma) * CE + gamma * KD + beta * L_E with hard Gumbel-softmax samples. The first
`warmup_share` of the steps trains the weights alone, every cell at once, with ops sampled
uniformly (as FBNet): untrained convs would otherwise be judged against pools and identity,
which need no training. The temperature decays over the steps after the warm-up. After each
epoch the derived genotype is evaluated on search_valid with the supernet's weights, and
`report(metrics, state)` gets everything needed to resume. `search_trainable` wraps this for
Ray Tune; it is the only caller of `tune.report`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from search_space.config import SearchSpaceConfig
from search_space.cost import (
    efficiency_loss,
    expected_flops,
    expected_params,
    genotype_params_flops,
    normalised_cost_vector,
    op_costs,
)
from search_space.genotype import Genotype, edge_index, num_edges
from search_space.gumbel import TemperatureSchedule
from search_space.layers import masked_mean
from search_space.supernet import Supernet, SupernetOutput
from workers.cache import open_cache
from workers.config import SearchConfig
from workers.dataset import NO_LABEL, TargetSplit, load_split, read_meta
from workers.latency import read_latency_table
from workers.losses import adabert_loss, gold_ce, kd_loss
from workers.teacher import teacher_word_embeddings

STATE_FORMAT = 1
STATE_FILE = "search_state.pt"
IDENTITY, ZERO = "identity", "zero"
# Collapse: the derived cell is mostly identity, or alpha's entropy stopped falling.
SKIP_DOMINATED_SHARE = 0.5
ENTROPY_WINDOW, ENTROPY_MIN_DROP = 2, 0.01
GRAD_CLIP = 5.0
SUBSET_SEED = 0  # every seed of a configuration searches the same training subset

Report = Callable[[dict[str, Any], dict[str, Any]], None]


@dataclass
class SearchData:
    """What a search reads: cache targets for train, gold labels for search_valid."""

    train: TargetSplit  # teacher_logits and probe_logits filled; augmented rows have label NO_LABEL
    valid: TargetSplit  # prepared search_valid split, gold labels only
    num_labels: int
    vocab_size: int
    pad_id: int
    num_teacher_layers: int
    embedding_init: torch.Tensor | None = None  # teacher word embeddings (V, H)
    max_length: int = 64  # tokens per example, for the FLOPs figures


@dataclass
class SearchResult:
    genotype: Genotype
    metrics: dict[str, Any]  # the last epoch's
    history: list[dict[str, Any]] = field(default_factory=list)


def load_search_data(
    *, cache_uri: str, prepared_dir: str, teacher_dir: str | None, max_train_examples: int | None = None
) -> SearchData:
    """Train targets from the teacher cache (memory-mapped), search_valid from the prepared folder."""
    meta = read_meta(prepared_dir)
    cache = open_cache(cache_uri)
    if int(cache.manifest["num_labels"]) != meta.num_labels:
        raise ValueError(f"cache {cache_uri} has {cache.manifest['num_labels']} labels, "
                         f"the prepared data {meta.num_labels}: they come from different tasks")
    return SearchData(
        train=sample_rows(cache.split("train"), max_train_examples, seed=SUBSET_SEED),
        valid=load_split(prepared_dir, "search_valid"),
        num_labels=meta.num_labels,
        vocab_size=meta.vocab_size,
        pad_id=meta.pad_id,
        num_teacher_layers=int(cache.manifest["num_layers"]),
        embedding_init=None if teacher_dir is None else teacher_word_embeddings(teacher_dir),
        max_length=meta.max_length,
    )


def sample_rows(split: TargetSplit, n: int | None, *, seed: int) -> TargetSplit:
    """A fixed random `n` rows (in their original order), or the split itself when it is no larger."""
    if n is None or len(split) <= n:
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return split.subset(index)


def check_search_data(data: SearchData) -> None:
    """ValueError for data a search cannot use, before any training starts."""
    train = data.train
    if not train.has_teacher:
        raise ValueError("search train data needs teacher targets (read it from the teacher cache)")
    if len(train) < 2:
        raise ValueError(f"search needs at least 2 training examples (one per half), got {len(train)}")
    if len(data.valid) == 0 or bool((data.valid.labels == NO_LABEL).any()):
        raise ValueError("search_valid must be non-empty and fully labelled")
    if train.teacher_logits.shape[-1] != data.num_labels:
        raise ValueError(f"teacher logits have {train.teacher_logits.shape[-1]} classes, the task {data.num_labels}")
    if train.probe_logits is not None and train.probe_logits.shape[1] != data.num_teacher_layers + 1:
        raise ValueError(f"probe logits cover {train.probe_logits.shape[1]} layers, expected "
                         f"{data.num_teacher_layers} hidden layers + embeddings")
    if (train.ids_b is None) != (data.valid.ids_b is None):
        raise ValueError("train and search_valid disagree on whether the task has text pairs")


def run_search(
    *,
    space: SearchSpaceConfig,
    cfg: SearchConfig,
    data: SearchData,
    report: Report | None = None,
    resume: dict[str, Any] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> SearchResult:
    """Search `cfg.epochs` epochs (continuing after `resume`'s epoch); report after each one."""
    check_search_data(data)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    costs = op_costs(primitives=space.primitives, dim=space.embed_dim, seq_len=data.max_length)
    latency_ms = None
    if cfg.cost_source == "latency":
        if cfg.latency_table is None:
            raise ValueError("cost_source 'latency' needs search.latency_table (make one with `adaray latency-table`)")
        latency_ms = read_latency_table(cfg.latency_table, primitives=space.primitives, embed_dim=space.embed_dim)
    cost_vec = normalised_cost_vector(costs, source=cfg.cost_source, latency_table=latency_ms).to(device)  # (n_ops,)

    train = sample_rows(data.train, cfg.max_train_examples, seed=SUBSET_SEED)
    weights_half, arch_half = _halves(train, seed=cfg.seed)
    steps_per_epoch = math.ceil(len(weights_half) / cfg.batch_size)
    warmup_steps = int(cfg.warmup_share * cfg.epochs * steps_per_epoch)
    schedule = TemperatureSchedule(start=cfg.tau_start, end=cfg.tau_end,
                                   total_steps=max(1, cfg.epochs * steps_per_epoch - warmup_steps))

    torch.manual_seed(cfg.seed)
    model = Supernet(space, vocab_size=data.vocab_size, num_labels=data.num_labels,
                     embedding_init=data.embedding_init, pad_id=data.pad_id).to(device)
    weight_params = model.weight_parameters()
    opt_weights = torch.optim.AdamW(weight_params, lr=cfg.lr_weights, weight_decay=cfg.weight_decay)
    # Adam with a short memory for alpha, as DARTS: the architecture should follow recent evidence.
    opt_arch = torch.optim.Adam(model.arch_parameters(), lr=cfg.lr_alpha, betas=(0.5, 0.999))
    gumbel = torch.Generator(device=device).manual_seed(cfg.seed)
    epoch, step, history = 0, 0, []
    if resume is not None:
        epoch, step, history = _restore(resume, space=space, cfg=cfg, model=model, opt_weights=opt_weights,
                                        opt_arch=opt_arch, gumbel=gumbel, device=device)

    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=step, disable=not progress, desc="search", unit="step")
    try:
        while epoch < cfg.epochs:
            model.train()
            sums = dict.fromkeys(("loss", "loss_ce", "loss_kd", "loss_eff", "loss_arch"), 0.0)
            arch_updates = 0
            arch_batches = _endless(arch_half, batch_size=cfg.batch_size, seed=_batch_seed(cfg.seed, epoch, 1))
            weight_batches = weights_half.batches(batch_size=cfg.batch_size, shuffle=True,
                                                  seed=_batch_seed(cfg.seed, epoch, 0), group_by_length=True)
            for batch in weight_batches:
                tau = schedule(max(0, step - warmup_steps))
                # weights on one half ...
                model.zero_grad(set_to_none=True)
                # the warm-up trains every cell: sampled depths would leave the deep ones behind
                terms = search_losses(model, _to(batch, device), tau=tau, generator=gumbel, cfg=cfg, cost_vec=cost_vec,
                                      depth=space.k_max if step < warmup_steps else None)
                terms["loss"].backward()
                torch.nn.utils.clip_grad_norm_(weight_params, GRAD_CLIP)
                opt_weights.step()
                # ... alpha and depth on the other (first-order: no unrolled weight step), after the warm-up
                if step >= warmup_steps:
                    model.zero_grad(set_to_none=True)
                    with frozen(weight_params):
                        objective, arch_loss = arch_objective(model, _to(next(arch_batches), device), tau=tau,
                                                              generator=gumbel, cfg=cfg, cost_vec=cost_vec)
                        objective.backward()
                    opt_arch.step()
                    sums["loss_arch"] += float(arch_loss.detach())
                    arch_updates += 1
                for name, value in terms.items():
                    sums[name] += float(value.detach())
                step += 1
                bar.update()
                bar.set_postfix(epoch=epoch + 1, tau=f"{tau:.3f}", loss=f"{float(terms['loss'].detach()):.3f}")
            epoch += 1
            model.zero_grad(set_to_none=True)
            arch_steps = max(0, step - warmup_steps)
            loss_means = {k: v / max(1, arch_updates if k == "loss_arch" else steps_per_epoch) for k, v in sums.items()}
            metrics = _epoch_metrics(
                model, data=data, space=space, costs=costs, latency_ms=latency_ms, history=history, epoch=epoch,
                tau=schedule(arch_steps), loss_means=loss_means, batch_size=cfg.batch_size, device=device,
                arch_steps=arch_steps,
            )
            history.append(metrics)
            if report is not None:
                report(dict(metrics), _snapshot(space=space, cfg=cfg, model=model, opt_weights=opt_weights,
                                                opt_arch=opt_arch, gumbel=gumbel, epoch=epoch, step=step,
                                                history=history))
    finally:
        bar.close()
    return SearchResult(genotype=model.derive(), metrics=dict(history[-1]), history=[dict(m) for m in history])


def search_losses(
    model: Supernet, batch: dict[str, torch.Tensor], *, tau: float, generator: torch.Generator,
    cfg: SearchConfig, cost_vec: torch.Tensor, depth: int | None = None,
) -> dict[str, torch.Tensor]:
    """One hard-Gumbel forward and its loss terms; "loss" is the total both updates minimise."""
    out = _sample_forward(model, batch, tau=tau, generator=generator, depth=depth)
    return _loss_terms(out, batch, cfg=cfg, cost_vec=cost_vec)


def _sample_forward(
    model: Supernet, batch: dict[str, torch.Tensor], *, tau: float, generator: torch.Generator, depth: int | None = None
) -> SupernetOutput:
    return model(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b"),
                 tau=tau, hard=True, generator=generator, depth=depth)


def _loss_terms(
    out: SupernetOutput, batch: dict[str, torch.Tensor], *, cfg: SearchConfig, cost_vec: torch.Tensor
) -> dict[str, torch.Tensor]:
    ce = gold_ce(out.logits, batch["labels"])
    kd = kd_loss(out.logits, student_probes=out.cell_probe_logits, teacher_logits=batch["teacher_logits"],
                 teacher_probe_logits=batch.get("probe_logits"), labels=batch["labels"], temperature=cfg.kd_temperature)
    eff = efficiency_loss(out.op_probs, out.depth_probs, cost_vec)
    total = adabert_loss(ce=ce, kd=kd, eff=eff, gamma=cfg.gamma, beta=cfg.beta)
    return {"loss": total, "loss_ce": ce, "loss_kd": kd, "loss_eff": eff}


def arch_objective(
    model: Supernet, batch: dict[str, torch.Tensor], *, tau: float, generator: torch.Generator,
    cfg: SearchConfig, cost_vec: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the alpha step differentiates, the loss it stands for): the first's gradient
    estimates that of E_arch[L] w.r.t. alpha and the depth logits.

    "straight_through": the hard-Gumbel total loss itself. "score_function": REINFORCE over
    `arch_samples` architectures run on this one batch without gradients; each one's task loss,
    minus the mean of the others' (a leave-one-out baseline), weights the gradient of its
    log-probability, and beta * L_E is added exactly. The straight-through gradient of a sampled
    op is <dL/d out, op(x)>: the worth of rescaling that op's output, which a conv's own weights
    already set and a pool or identity cannot, so it leans toward the parameter-free ops; the
    score function compares losses and is unbiased, at arch_samples forwards per step.
    """
    if cfg.arch_gradient == "straight_through":
        loss = search_losses(model, batch, tau=tau, generator=generator, cfg=cfg, cost_vec=cost_vec)["loss"]
        return loss, loss.detach()
    losses, log_probs = [], []
    log_alpha = model.alpha.log_softmax(dim=-1)  # (E, n_ops)
    log_depth = model.depth_logits.log_softmax(dim=-1)  # (k_max,)
    for _ in range(cfg.arch_samples):
        with torch.no_grad():
            out = _sample_forward(model, batch, tau=tau, generator=generator)
            terms = _loss_terms(out, batch, cfg=cfg, cost_vec=cost_vec)
        losses.append(adabert_loss(ce=terms["loss_ce"], kd=terms["loss_kd"], eff=0.0, gamma=cfg.gamma, beta=0.0))
        log_probs.append((out.op_weights * log_alpha).sum() + log_depth[out.depth - 1])  # log p(sample)
    task = torch.stack(losses)  # (S,)
    eff = efficiency_loss(model.alpha.softmax(dim=-1), model.depth_logits.softmax(dim=-1), cost_vec)
    return leave_one_out_surrogate(task, torch.stack(log_probs)) + cfg.beta * eff, task.mean() + cfg.beta * eff.detach()


def leave_one_out_surrogate(losses: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """REINFORCE with each sample's baseline the mean of the others' losses (unbiased, as it
    does not depend on the sample itself). losses (S,) without grad, log_probs (S,) -> scalar
    whose gradient estimates grad E_p[loss]."""
    if len(losses) < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples, got {len(losses)}")
    losses = losses.detach()
    advantage = losses - (losses.sum() - losses) / (len(losses) - 1)  # (S,)
    return (advantage * log_probs).mean()


@contextmanager
def frozen(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """No gradients for `params` inside: the alpha step would discard them, and skipping the
    weight gradients saves about a third of its backward pass."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _halves(train: TargetSplit, *, seed: int) -> tuple[TargetSplit, TargetSplit]:
    """A fixed random split of train: weights learn on one half, alpha on the other."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    cut = math.ceil(len(train) / 2)
    return train.subset(order[:cut].sort().values), train.subset(order[cut:].sort().values)


def _batch_seed(seed: int, epoch: int, role: int) -> int:
    # Batch order is a function of (seed, epoch, half): a resumed epoch sees the same batches.
    return (seed * 1_000_003 + epoch) * 2 + role


def _endless(split: TargetSplit, *, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches, reshuffled each pass: the alpha half may hold one batch fewer."""
    passes = 0
    while True:
        yield from split.batches(batch_size=batch_size, shuffle=True, seed=seed + 7919 * passes,
                                 group_by_length=True)
        passes += 1


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def genotype_weights(genotype: Genotype, *, primitives: tuple[str, ...]) -> torch.Tensor:
    """(E, n_ops) one-hot rows on the genotype's kept edges, zero rows on dropped edges."""
    weights = torch.zeros(num_edges(genotype.num_nodes), len(primitives))
    for j, node in enumerate(genotype.nodes):
        for op, i in node:
            weights[edge_index(j, i), primitives.index(op)] = 1.0
    return weights


@torch.no_grad()
def derived_accuracy(
    model: Supernet, genotype: Genotype, split: TargetSplit, *, batch_size: int, device: torch.device
) -> float:
    """Accuracy of the genotype's path through the supernet (its inherited, not retrained, weights)."""
    was_training = model.training
    model.eval()
    weights = genotype_weights(genotype, primitives=model.space.primitives).to(device)  # (E, n_ops)
    active = [[o for o, w in enumerate(row) if w] for row in weights.tolist()]
    correct = 0
    for batch in split.batches(batch_size=batch_size):
        batch = _to(batch, device)
        s0, s1, mask = model.embedding(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b"))
        pooled = []
        for cell in model.cells[: genotype.depth]:
            s0, s1 = s1, cell(s0, s1, mask, weights, active=active)  # (B, T, D)
            pooled.append(masked_mean(s1, mask))
        logits = model.head(torch.stack(pooled, dim=1))  # (B, C)
        correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
    model.train(was_training)
    return correct / len(split)


def _epoch_metrics(
    model: Supernet, *, data: SearchData, space: SearchSpaceConfig, costs: dict, latency_ms: dict[str, float] | None,
    history: list[dict], epoch: int, tau: float, loss_means: dict[str, float], batch_size: int, device: torch.device,
    arch_steps: int,
) -> dict[str, Any]:
    op_probs = model.alpha.detach().softmax(dim=-1).cpu()  # (E, n_ops)
    depth_probs = model.depth_logits.detach().softmax(dim=-1).cpu()  # (k_max,)
    genotype = model.derive()
    params, flops = genotype_params_flops(genotype, space=space, seq_len=data.max_length,
                                          vocab_size=data.vocab_size, num_labels=data.num_labels)
    entropy = float(-(op_probs * op_probs.clamp_min(1e-12).log()).sum(dim=-1).mean())
    prims = space.primitives
    derived_skip = genotype.share_of([IDENTITY])
    reason = ""
    if derived_skip > SKIP_DOMINATED_SHARE:
        reason = "skip_dominated"
    else:  # alpha's entropy over the last epochs in which alpha moved (none move in the warm-up)
        searched = [m["alpha_entropy"] for m in history if m["arch_steps"] > 0]
        if len(searched) >= ENTROPY_WINDOW and entropy > (1 - ENTROPY_MIN_DROP) * searched[-ENTROPY_WINDOW]:
            reason = "entropy_stalled"
    depths = torch.arange(1, space.k_max + 1, dtype=depth_probs.dtype)
    metrics = {
        "epoch": epoch,
        "search_valid_acc": derived_accuracy(model, genotype, data.valid, batch_size=2 * batch_size, device=device),
        "expected_params": expected_params(op_probs, depth_probs, costs),
        "expected_flops": expected_flops(op_probs, depth_probs, costs),
        "expected_depth": float((depth_probs * depths).sum()),
        "genotype": genotype.to_json(),
        "depth": genotype.depth,
        "derived_params": params,
        "derived_flops": flops,
        "alpha_entropy": entropy,
        "skip_share": float(op_probs[:, prims.index(IDENTITY)].mean()) if IDENTITY in prims else 0.0,
        "zero_share": float(op_probs[:, prims.index(ZERO)].mean()) if ZERO in prims else 0.0,
        "derived_skip_share": derived_skip,
        "collapse": int(bool(reason)),
        "collapse_reason": reason,
        "arch_steps": arch_steps,
        "tau": tau,
        **loss_means,
    }
    if latency_ms is not None:
        lat = torch.tensor([latency_ms[p] for p in prims], dtype=op_probs.dtype)
        # Per-op latencies summed over a cell's edges, times the expected depth.
        metrics["expected_latency_ms"] = float((op_probs @ lat).sum() * metrics["expected_depth"])
    return metrics


def _cpu_copy(obj: Any) -> Any:
    """A detached CPU copy of nested dicts/lists of tensors: a snapshot later steps cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _snapshot(
    *, space: SearchSpaceConfig, cfg: SearchConfig, model: Supernet, opt_weights: torch.optim.Optimizer,
    opt_arch: torch.optim.Optimizer, gumbel: torch.Generator, epoch: int, step: int, history: list[dict],
) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "space": space.to_dict(),
        "search": cfg.model_dump(mode="json"),
        "epoch": epoch,
        "step": step,
        "model": _cpu_copy(model.state_dict()),
        "opt_weights": _cpu_copy(opt_weights.state_dict()),
        "opt_arch": _cpu_copy(opt_arch.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "gumbel_rng": gumbel.get_state(),
        "history": [dict(m) for m in history],
    }


def _restore(
    state: dict[str, Any], *, space: SearchSpaceConfig, cfg: SearchConfig, model: Supernet,
    opt_weights: torch.optim.Optimizer, opt_arch: torch.optim.Optimizer, gumbel: torch.Generator, device: torch.device,
) -> tuple[int, int, list[dict]]:
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"resume state has format {state.get('format')!r}, expected {STATE_FORMAT}")
    if state["space"] != space.to_dict() or state["search"] != cfg.model_dump(mode="json"):
        raise ValueError("resume state comes from a search with another space or search config")
    model.load_state_dict(state["model"])
    opt_weights.load_state_dict(state["opt_weights"])
    opt_arch.load_state_dict(state["opt_arch"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    gumbel.set_state(state["gumbel_rng"])
    return int(state["epoch"]), int(state["step"]), [dict(m) for m in state["history"]]


def search_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one search, a metrics report and checkpoint per epoch.

    config: "space" (dict), "search" (SearchConfig fields), "cache_uri", "prepared_dir",
    "teacher_dir", "max_train_examples"; other keys (trial bookkeeping) are ignored.
    """
    from ray import tune  # here, not at the top: the local `adaray search` never pays for importing Tune

    space = SearchSpaceConfig.from_dict(config["space"])
    cfg = SearchConfig(**config["search"])
    data = load_search_data(cache_uri=config["cache_uri"], prepared_dir=config["prepared_dir"],
                            teacher_dir=config.get("teacher_dir"), max_train_examples=config.get("max_train_examples"))
    resume = None
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="adaray-search-") as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    run_search(space=space, cfg=cfg, data=data, report=report, resume=resume)
