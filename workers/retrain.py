"""Train a student with KD from the cache, and evaluate it: a derived genotype from scratch, or a
member of the small-transformer family (from scratch or from the teacher's bottom layers).

The same losses as the search (gold CE + soft logits + attentive probe hints, no efficiency
term: the architecture is fixed). The dev-best epoch's weights are kept, and with
`cfg.task_vocab` only the embedding rows the train split uses (its metrics carry the scores from
before and after). With `cfg.exit_max_drop` the early-exit curve on dev picks the student's default
exit threshold (workers/early_exit.py); the student folder
(config.json, model.safetensors, tokenizer, metrics.json) appears at `out_dir` in one rename.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from search_space.config import SearchSpaceConfig, TransformerConfig
from search_space.cost import genotype_params_flops
from search_space.genotype import Genotype
from search_space.layers import KroneckerTable, ProbedStack, project_embeddings
from search_space.student import Student, keep_vocabulary, task_token_ids
from search_space.transformer import SmallTransformer, teacher_layer_state
from workers.config import RetrainConfig
from workers.dataset import PreparedMeta, TargetSplit
from workers.early_exit import exit_curve, pick_threshold
from workers.local_files import publish_dir
from workers.losses import adabert_loss, gold_ce, kd_loss
from workers.metrics import classification_scores, split_scores
from workers.search_data import sample_rows
from workers.splits import NO_LABEL
from workers.student import save_student
from workers.student_files import METRICS_FILE
from workers.training import GRAD_CLIP, adamw, to_device

WARMUP_SHARE = 0.1


Arch = Genotype | TransformerConfig  # a searched cell stack, or a member of the small-transformer family


@dataclass
class RetrainResult:
    student_dir: Path
    metrics: dict[str, Any]
    arch: Arch


def arch_fields(arch: Arch) -> dict[str, str]:
    """What a student's metrics say of its architecture: the genotype, or the transformer (JSON)."""
    if isinstance(arch, Genotype):
        return {"genotype": arch.to_json()}
    return {"transformer": json.dumps(arch.to_dict(), sort_keys=True)}


def student_flops(model: ProbedStack, *, seq_len: int) -> float:
    """FLOPs per example at `seq_len`: the cost model's for cells, 2 per dense weight per token (the
    teacher's accounting) for a transformer."""
    if isinstance(model, Student):
        return genotype_params_flops(model.genotype, space=model.space, seq_len=seq_len,
                                     vocab_size=model.vocab_size, num_labels=model.num_labels)[1]
    return 2.0 * model.dense_params() * seq_len


def build_student(arch: Arch, *, space: SearchSpaceConfig, meta: PreparedMeta, embedding_init: torch.Tensor | None,
                  teacher_dir: str | Path | None = None) -> ProbedStack:
    """A fresh student of either family, started from the teacher: its table projected to the
    student's width, or, for a transformer with init "teacher", its table and bottom layers as they are
    (read from `teacher_dir`)."""
    if isinstance(arch, Genotype):
        init = None if embedding_init is None else project_embeddings(embedding_init, space.embed_dim)  # (V, d)
        return Student(arch, space=space, vocab_size=meta.vocab_size, num_labels=meta.num_labels,
                       pad_id=meta.pad_id, with_probes=True, embedding_init=init)
    from_teacher = arch.init == "teacher"
    if from_teacher and (embedding_init is None or teacher_dir is None):
        raise ValueError("a transformer with init 'teacher' needs the teacher's table and folder")
    init = embedding_init if from_teacher or embedding_init is None else project_embeddings(embedding_init,
                                                                                            arch.hidden)  # (V, H)
    model = SmallTransformer(arch, vocab_size=meta.vocab_size, num_labels=meta.num_labels,
                             max_positions=meta.max_length, pad_id=meta.pad_id, embedding_init=init)
    if from_teacher:
        from workers.teacher import teacher_weights

        state, heads = teacher_weights(teacher_dir)
        model.load_state_dict(teacher_layer_state(model, state, teacher_heads=heads), strict=False)
    model.embedding.table.requires_grad_(not arch.freeze_table)
    return model


def retrain(
    *,
    arch: Arch,
    space: SearchSpaceConfig,
    cfg: RetrainConfig,
    train: TargetSplit,
    dev: TargetSplit,
    test: TargetSplit,
    meta: PreparedMeta,
    num_teacher_layers: int,
    embedding_init: torch.Tensor | None,
    tokenizer_dir: str | Path,
    out_dir: Path,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> RetrainResult:
    """Train, pick the dev-best epoch, evaluate on dev and test, save. See module doc. Latency is
    measured elsewhere (orchestrator/measure.py), with nothing else running."""
    _check_inputs(train=train, dev=dev, test=test, meta=meta, num_teacher_layers=num_teacher_layers,
                  tokenizer_dir=tokenizer_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    model = build_student(arch, space=space, meta=meta, embedding_init=embedding_init,
                          teacher_dir=tokenizer_dir).to(device)

    train = sample_rows(train, cfg.max_train_examples, seed=cfg.seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    cell = isinstance(arch, Genotype)
    epochs = max(cfg.epochs if cell else arch.train_epochs(cfg.epochs), math.ceil(cfg.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    lr = cfg.lr if cell else arch.learning_rate(cfg.lr)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trained, lr=lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(WARMUP_SHARE * total), total)
    best_score, best_state, best_epoch, by_epoch = -1.0, None, 0, []
    started, cpu_started = time.perf_counter(), time.process_time()
    with tqdm(total=total, disable=not progress, desc="retrain", unit="step") as bar:
        for epoch in range(epochs):
            model.train()
            for batch in train.batches(batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed * 1_000_003 + epoch,
                                       group_by_length=True):
                batch = to_device(batch, device)
                out = model(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b"))
                ce = gold_ce(out.logits, batch["labels"])
                kd = kd_loss(out.logits, student_probes=out.cell_probe_logits, teacher_logits=batch["teacher_logits"],
                             teacher_probe_logits=batch.get("probe_logits"), labels=batch["labels"],
                             temperature=cfg.kd_temperature)
                loss = adabert_loss(ce=ce, kd=kd, eff=0.0, gamma=cfg.gamma, beta=0.0)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, GRAD_CLIP)
                optimizer.step()
                scheduler.step()
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
            score = evaluate(model, dev, batch_size=2 * cfg.batch_size, device=device)[meta.metric]
            by_epoch.append(score)
            if score > best_score:
                best_score, best_epoch = score, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    model.load_state_dict(best_state)
    full_vocab: dict[str, float] = {}
    if cfg.task_vocab and not isinstance(model.embedding.table, KroneckerTable):  # no rows to drop there
        for name, split in (("dev", dev), ("test", test)):
            full_vocab[f"{name}_metric_full_vocab"] = evaluate(model, split, batch_size=2 * cfg.batch_size,
                                                               device=device)[meta.metric]
        model = task_vocabulary_student(model, train=train, meta=meta, tokenizer_dir=tokenizer_dir).to(device)

    dev_scores = evaluate(model, dev, batch_size=2 * cfg.batch_size, device=device)
    test_scores = evaluate(model, test, batch_size=2 * cfg.batch_size, device=device)
    flops = student_flops(model, seq_len=meta.max_length)
    metrics: dict[str, Any] = {
        **split_scores("dev", dev_scores, metric=meta.metric),
        **split_scores("test", test_scores, metric=meta.metric),
        "metric": meta.metric,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_rows": model.embedding.table.num_embeddings,  # the task vocabulary's size, or the tokenizer's
        **full_vocab,  # dev/test before the table shrank: what the task vocabulary cost
        "flops": flops,
        "best_epoch": best_epoch,
        "dev_by_epoch": by_epoch,  # the task's metric after each epoch: how soon a student shows its worth
        "train_examples": len(train),
        "train_seconds": train_seconds,
        "cpu_seconds": cpu_seconds,  # this process's CPU time: what compute budgets compare
        **arch_fields(arch),
    }
    model.cpu().eval()
    exit_threshold = 0.0  # the full model
    if cfg.exit_max_drop is not None:
        curve = exit_curve(model, dev, metric=meta.metric)
        exit_threshold = pick_threshold(curve, max_drop=cfg.exit_max_drop)
        metrics.update(exit_curve=curve, exit_threshold=exit_threshold,
                       exit_mean_cells=next(p["mean_cells"] for p in curve if p["threshold"] == exit_threshold))
    student_dir = _save_atomically(model, out_dir=out_dir, tokenizer_dir=tokenizer_dir, metrics=metrics, extra={
        "task": meta.task,
        "label_names": list(meta.label_names),
        "pair": meta.pair,
        "max_length": meta.max_length,
        "metric": meta.metric,
        "tokenizer": {"source": meta.tokenizer, "pad_id": meta.pad_id, "cls_id": meta.cls_id, "sep_id": meta.sep_id},
        "teacher_layers": num_teacher_layers,
        "exit_threshold": exit_threshold,  # predict's default (StudentPredictor, the pyfunc's params)
    })
    return RetrainResult(student_dir=student_dir, metrics=metrics, arch=arch)


def task_vocabulary_student(model: ProbedStack, *, train: TargetSplit, meta: PreparedMeta,
                            tokenizer_dir: str | Path) -> ProbedStack:
    """The model with only the rows of ids in the train split (its augmented copies included) and
    the special tokens; ids never seen in training read [UNK]'s row (the pad row without an [UNK])."""
    unk_id = AutoTokenizer.from_pretrained(str(tokenizer_dir)).unk_token_id
    unk_id = meta.pad_id if unk_id is None else unk_id
    tables = [t for t in (train.ids_a, train.ids_b) if t is not None]
    keep = task_token_ids(*tables, special_ids=(meta.pad_id, meta.cls_id, meta.sep_id, unk_id))
    return keep_vocabulary(model, keep, unk_id=unk_id)


def retrain_from_paths(
    *, arch: Arch, space: SearchSpaceConfig, cfg: RetrainConfig, cache_uri: str, prepared_dir: str | Path,
    teacher_dir: str | Path, out_dir: Path, train: TargetSplit | None = None, progress: bool = False,
) -> RetrainResult:
    """`retrain` on a job's data stages as they are stored: the cache's transfer set (or `train`, a
    subset of it), the prepared dev and test splits, the teacher's word embeddings and tokenizer. What
    the pipeline's Ray tasks, `adaray search` and the benches all call."""
    from workers.cache import open_cache
    from workers.dataset import load_split, read_meta
    from workers.teacher import teacher_word_embeddings

    cache = open_cache(cache_uri)
    return retrain(
        arch=arch, space=space, cfg=cfg, train=cache.split("train") if train is None else train,
        dev=load_split(prepared_dir, "dev"), test=load_split(prepared_dir, "test"), meta=read_meta(prepared_dir),
        num_teacher_layers=int(cache.manifest["num_layers"]), embedding_init=teacher_word_embeddings(teacher_dir),
        tokenizer_dir=teacher_dir, out_dir=out_dir, progress=progress,
    )


def _check_inputs(
    *, train: TargetSplit, dev: TargetSplit, test: TargetSplit, meta: PreparedMeta, num_teacher_layers: int,
    tokenizer_dir: str | Path,
) -> None:
    if not train.has_teacher:
        raise ValueError("retrain needs teacher targets on train (read it from the teacher cache)")
    if len(train) == 0:
        raise ValueError("retrain got an empty train split")
    if train.teacher_logits.shape[-1] != meta.num_labels:
        raise ValueError(f"teacher logits have {train.teacher_logits.shape[-1]} classes, the task {meta.num_labels}")
    if train.probe_logits is not None and train.probe_logits.shape[1] != num_teacher_layers + 1:
        raise ValueError(f"probe logits cover {train.probe_logits.shape[1]} layers, expected "
                         f"{num_teacher_layers} hidden layers + embeddings")
    for name, split in (("dev", dev), ("test", test)):
        if len(split) == 0 or bool((split.labels == NO_LABEL).any()):
            raise ValueError(f"{name} must be non-empty and fully labelled")
    if not Path(tokenizer_dir).is_dir():
        raise ValueError(f"tokenizer folder not found: {tokenizer_dir}")


@torch.no_grad()
def predict_classes(model: ProbedStack, split: TargetSplit, *, batch_size: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """The model's class for every row of `split`, in order. (N,) int64"""
    was_training = model.training
    model.eval()
    predictions = []
    for batch in split.batches(batch_size=batch_size):
        batch = to_device(batch, device)
        logits = model(batch["ids_a"], batch["mask_a"], batch.get("ids_b"), batch.get("mask_b")).logits  # (B, C)
        predictions.append(logits.argmax(dim=-1).cpu())
    model.train(was_training)
    return torch.cat(predictions)


def evaluate(model: ProbedStack, split: TargetSplit, *, batch_size: int, device: torch.device | str = "cpu") -> dict:
    """{"accuracy", "f1_macro"} on a gold-labelled split."""
    predictions = predict_classes(model, split, batch_size=batch_size, device=device)
    return classification_scores(predictions, split.labels, num_labels=model.num_labels)


def _save_atomically(
    model: ProbedStack, *, out_dir: Path, tokenizer_dir: str | Path, metrics: dict, extra: dict
) -> Path:
    """Write into a temp folder beside `out_dir`, then rename it into place (replacing an older one,
    which is put back if the swap fails)."""

    def write(folder: Path) -> None:
        save_student(model, folder, tokenizer_dir=tokenizer_dir, extra=extra)
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    return publish_dir(out_dir, write, replace=True)
