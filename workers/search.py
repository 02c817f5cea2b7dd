"""One differentiable AdaBERT search: the supernet trained against the teacher cache.

First-order alternating updates (DARTS): each step updates the supernet's weights on a batch
from one half of train, then alpha and the depth logits on a batch from the other half.

- Weights: one path per step with ops drawn uniformly (SPOS; `weight_path: alpha` samples it
  from alpha after the warm-up instead), and the head scored at every depth, so every op and
  every depth trains, whatever alpha currently prefers.
- Alpha: a hard Gumbel-softmax path, straight-through (or the score-function estimator), under
  sum_k p(k) * L_k + beta * L_E, where L_k = (1 - gamma) * CE + gamma * KD of the head on the first
  k cells: the depth distribution moves by comparing the depths' real losses.

The first `warmup_share` of the steps trains the weights alone. After each epoch the derived
genotype is scored on search_valid with the supernet's weights; after the last, a pool of
genotypes drawn from alpha is scored the same way (workers/candidates.py) and the best are
reported. `report(metrics, state)` gets everything needed to resume.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from search_space.genotype import Genotype
from search_space.gumbel import TemperatureSchedule
from search_space.supernet import Supernet, SupernetOutput, uniform_path
from workers.candidates import candidate_pool, inherited_scores
from workers.config import SearchConfig
from workers.dataset import TargetSplit
from workers.latency import read_latency_table
from workers.losses import depth_losses
from workers.search_data import SUBSET_SEED, SearchData, check_search_data, sample_rows
from workers.search_state import restore, snapshot
from workers.training import GRAD_CLIP, adamw, to_device

IDENTITY, ZERO = "identity", "zero"
# Collapse: the derived cell is mostly parameter-free, or alpha's entropy stopped falling.
SKIP_DOMINATED_SHARE = 0.5
PARAMETER_FREE = ("identity", "max_pool_3", "avg_pool_3", "zero")
ENTROPY_WINDOW, ENTROPY_MIN_DROP = 2, 0.01

Report = Callable[[dict[str, Any], dict[str, Any]], None]


@dataclass
class SearchResult:
    genotype: Genotype  # the best candidate by inherited score (alpha's argmax when there is no pool)
    metrics: dict[str, Any]  # the last epoch's
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def candidates(self) -> list[dict[str, Any]]:
        return json.loads(self.metrics.get("candidates", "[]"))


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
    cost_vec = normalised_cost_vector(costs, reference=data.teacher_cost, kept_edges=space.k_max * 2 * space.num_nodes,
                                      source=cfg.cost_source, latency_table=latency_ms).to(device)  # (n_ops,)

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
    opt_weights = adamw(weight_params, lr=cfg.lr_weights, weight_decay=cfg.weight_decay)
    # Adam with a short memory for alpha, as DARTS: the architecture should follow recent evidence.
    opt_arch = torch.optim.Adam(model.arch_parameters(), lr=cfg.lr_alpha, betas=(0.5, 0.999))
    gumbel = torch.Generator(device=device).manual_seed(cfg.seed)
    epoch, step, history = 0, 0, []
    if resume is not None:
        epoch, step, history = restore(resume, space=space, cfg=cfg, model=model, opt_weights=opt_weights,
                                       opt_arch=opt_arch, gumbel=gumbel, device=device)

    cpu_spent = history[-1]["cpu_seconds"] if history else 0.0  # over every epoch, resumed ones too
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=step, disable=not progress, desc="search", unit="step")
    try:
        while epoch < cfg.epochs:
            epoch_cpu = time.process_time()
            model.train()
            sums = dict.fromkeys(("loss", "loss_ce", "loss_kd", "loss_eff", "loss_arch"), 0.0)
            arch_updates = 0
            arch_batches = _endless(arch_half, batch_size=cfg.batch_size, seed=_batch_seed(cfg.seed, epoch, 1))
            weight_batches = weights_half.batches(batch_size=cfg.batch_size, shuffle=True,
                                                  seed=_batch_seed(cfg.seed, epoch, 0), group_by_length=True)
            for batch in weight_batches:
                tau = schedule(max(0, step - warmup_steps))
                searching = step >= warmup_steps
                # weights on one half: a path of uniformly drawn ops (or alpha's), every depth ...
                model.zero_grad(set_to_none=True)
                path = None if searching and cfg.weight_path == "alpha" else uniform_path(
                    model.alpha.shape[0], model.alpha.shape[1], generator=gumbel, device=device)
                terms = weight_losses(model, to_device(batch, device), tau=tau, generator=gumbel, cfg=cfg,
                                      cost_vec=cost_vec, path=path)
                terms["loss"].backward()
                torch.nn.utils.clip_grad_norm_(weight_params, GRAD_CLIP)
                opt_weights.step()
                # ... alpha and depth on the other (first-order: no unrolled weight step), after the warm-up
                if searching:
                    model.zero_grad(set_to_none=True)
                    with frozen(weight_params):
                        objective, arch_loss = arch_objective(model, to_device(next(arch_batches), device), tau=tau,
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
            if epoch == cfg.epochs and (cfg.candidates > 1 or cfg.random_candidates):
                pool = candidate_pool(model, space=space, valid=data.valid, metric=data.metric, count=cfg.candidates,
                                      random=cfg.random_candidates, seed=cfg.seed, stream=cfg.draw_stream,
                                      seq_len=data.max_length, batch_size=2 * cfg.batch_size, device=device)
                from_alpha = [c for c in pool if c["source"] == "alpha"]
                metrics["candidates"] = json.dumps(from_alpha[: cfg.report_candidates]
                                                   + [c for c in pool if c["source"] == "random"])
                metrics["best_candidate"] = pool[0]["genotype"]
                metrics["best_candidate_score"] = pool[0]["score"]
            cpu_spent += time.process_time() - epoch_cpu
            metrics["cpu_seconds"] = cpu_spent
            history.append(metrics)
            if report is not None:
                report(dict(metrics), snapshot(space=space, cfg=cfg, model=model, opt_weights=opt_weights,
                                               opt_arch=opt_arch, gumbel=gumbel, epoch=epoch, step=step,
                                               history=history))
    finally:
        bar.close()
    last = history[-1]
    return SearchResult(genotype=Genotype.from_json(last.get("best_candidate", last["genotype"])),
                        metrics=dict(last), history=[dict(m) for m in history])


def _forward(model: Supernet, batch: dict[str, torch.Tensor], *, tau: float, generator: torch.Generator,
             path: torch.Tensor | None = None) -> SupernetOutput:
    return model(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b"),
                 tau=tau, hard=True, generator=generator, op_weights=path)


def _depth_terms(out: SupernetOutput, batch: dict[str, torch.Tensor], *, cfg: SearchConfig,
                 k_max: int) -> dict[str, torch.Tensor]:
    return depth_losses(out.logits_by_depth, cell_probes=out.cell_probe_logits, batch=batch, gamma=cfg.gamma,
                        temperature=cfg.kd_temperature, k_max=k_max)


def weight_losses(
    model: Supernet, batch: dict[str, torch.Tensor], *, tau: float, generator: torch.Generator,
    cfg: SearchConfig, cost_vec: torch.Tensor, path: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weight step's loss: the task loss averaged over every depth, on `path` (or a sample of
    alpha). "loss_eff" is logged only: no weight sees it."""
    out = _forward(model, batch, tau=tau, generator=generator, path=path)
    terms = _depth_terms(out, batch, cfg=cfg, k_max=model.space.k_max)
    eff = efficiency_loss(out.op_probs, out.depth_probs, cost_vec)
    return {"loss": terms["task"].mean(), "loss_ce": terms["ce"].mean(), "loss_kd": terms["kd"].mean(),
            "loss_eff": eff.detach()}


def arch_objective(
    model: Supernet, batch: dict[str, torch.Tensor], *, tau: float, generator: torch.Generator,
    cfg: SearchConfig, cost_vec: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the alpha step differentiates, the loss it stands for):
    sum_k p(k) * L_k + beta * L_E, its gradient w.r.t. alpha and the depth logits.

    The depth part is exact: every depth's loss is computed. For the ops, "straight_through"
    backpropagates through one hard Gumbel sample; "score_function" runs `arch_samples` paths
    without gradients and weighs each one's log-probability by its loss minus the mean of the
    others' (REINFORCE with a leave-one-out baseline): unbiased, at arch_samples forwards per step.
    """
    depth_probs = model.depth_logits.softmax(dim=-1)  # (k_max,)
    eff = efficiency_loss(model.alpha.softmax(dim=-1), depth_probs, cost_vec)
    if cfg.arch_gradient == "straight_through":
        out = _forward(model, batch, tau=tau, generator=generator)
        task = (depth_probs * _depth_terms(out, batch, cfg=cfg, k_max=model.space.k_max)["task"]).sum()
        return task + cfg.beta * eff, (task + cfg.beta * eff).detach()
    per_depth, log_probs = [], []
    log_alpha = model.alpha.log_softmax(dim=-1)  # (E, n_ops)
    for _ in range(cfg.arch_samples):
        with torch.no_grad():
            out = _forward(model, batch, tau=tau, generator=generator)
            per_depth.append(_depth_terms(out, batch, cfg=cfg, k_max=model.space.k_max)["task"])  # (K,)
        log_probs.append((out.op_weights * log_alpha).sum())  # log p(path)
    losses = torch.stack(per_depth)  # (S, K)
    task_per_sample = losses @ depth_probs.detach()  # (S,)
    depth_term = (depth_probs * losses.mean(dim=0)).sum()  # exact in the depth probabilities
    surrogate = leave_one_out_surrogate(task_per_sample, torch.stack(log_probs)) + depth_term
    return surrogate + cfg.beta * eff, depth_term.detach() + cfg.beta * eff.detach()


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
    free_share = genotype.share_of(PARAMETER_FREE)
    reason = ""
    if free_share > SKIP_DOMINATED_SHARE:
        reason = "parameter_free"
    else:  # alpha's entropy over the last epochs in which alpha moved (none move in the warm-up)
        searched = [m["alpha_entropy"] for m in history if m["arch_steps"] > 0]
        if len(searched) >= ENTROPY_WINDOW and entropy > (1 - ENTROPY_MIN_DROP) * searched[-ENTROPY_WINDOW]:
            reason = "entropy_stalled"
    depths = torch.arange(1, space.k_max + 1, dtype=depth_probs.dtype)
    metrics = {
        "epoch": epoch,
        "metric": data.metric,
        "search_valid_score": inherited_scores(model, genotype, data.valid, metric=data.metric,
                                               batch_size=2 * batch_size, device=device)[-1],
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
        "derived_free_share": free_share,
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
