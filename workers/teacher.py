"""The teacher stage: a BERT-family backbone with a trained head for the task, plus layer probes.

`prepare_teacher` fine-tunes the backbone when it has no head for the task, trains one linear
probe per layer, and saves everything under `<out_root>/<key>`, keyed by the backbone's weights,
the prepared data, the hyperparameters and the recipe (TEACHER_RECIPE), so a re-run is a cache hit. `load_teacher` gives the
frozen teacher the cache builder runs: logits, per-layer probe logits and pooled states at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

from search_space.cost import OpCost
from workers.config import TeacherConfig
from workers.dataset import PreparedMeta, TargetSplit, is_prepared, load_split, read_meta, teacher_inputs
from workers.latency import hardware_name
from workers.local_files import publish_dir
from workers.metrics import METRIC_NAMES, classification_scores
from workers.probes import (
    PROBES_FILE,
    LayerProbes,
    load_probes,
    pool_layers,
    probe_scores,
    save_probes,
    train_probes,
    write_probe_scores,
)
from workers.progress import say
from workers.training import adamw

TEACHER_JSON = "teacher.json"
# Part of every teacher key, as CACHE_FORMAT is of the cache's: bump it when how a teacher is made changes (its
# batches, schedule, the checkpoint kept, the probes), so no workspace reuses a teacher made the old way.
TEACHER_RECIPE = "adaray-teacher-1"
MODEL_FILE = "model.safetensors"
_FINE_TUNED = "fine_tuned.json"  # marks a complete fine-tuning checkpoint: only the probes are left to do
_TOKENIZER_PREFIXES = ("tokenizer", "vocab", "special_tokens", "merges", "added_tokens", "spiece", "sentencepiece")


@dataclass(frozen=True)
class TeacherArtifacts:
    dir: Path
    key: str
    cache_hit: bool
    fine_tuned: bool
    metric: str  # the task's metric (workers.metrics.METRICS): dev_score and probe_scores are in it
    dev_score: float
    probe_scores: list[float]
    num_layers: int  # L hidden layers; there are L+1 probes (embedding output first)
    hidden_size: int
    num_labels: int
    dev_scores: dict[str, float] | None = None  # accuracy and f1_macro on dev (None: saved before they were kept)

    # Fine-tuning's log: {"steps", "dev_history": the task's metric at each evaluation, "stopped_early",
    # "hardware": workers.latency.hardware_name where it ran (absent in teachers saved before it was kept)};
    # None when the teacher kept a trained head (or was saved before the log was kept).
    training: dict | None = None

    def score_in(self, metric: str) -> float:
        """The dev score in `metric` (teachers saved before macro-F1 was kept have accuracy only)."""
        return (self.dev_scores or {}).get(metric, self.dev_score)


@dataclass
class TeacherOutput:
    logits: torch.Tensor  # (B, C)
    probe_logits: torch.Tensor  # (B, L+1, C)
    pooled: torch.Tensor  # (B, L+1, H)


class TeacherModel(nn.Module):
    """The fine-tuned classifier and its layer probes, frozen."""

    def __init__(self, model: nn.Module, probes: LayerProbes) -> None:
        super().__init__()
        self.model, self.probes = model, probes

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> TeacherOutput:
        """Inputs (B, T) as built by workers.dataset.teacher_inputs."""
        out = self.model(**_model_kwargs(self.model, input_ids, attention_mask, token_type_ids), output_hidden_states=True)
        pooled = pool_layers(out.hidden_states, attention_mask)  # (B, L+1, H)
        return TeacherOutput(logits=out.logits, probe_logits=self.probes(pooled), pooled=pooled)


def _model_kwargs(model: nn.Module, input_ids, attention_mask, token_type_ids) -> dict[str, torch.Tensor]:
    # Backbones with a single segment type (RoBERTa, DistilBERT) must not get token types.
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None and getattr(model.config, "type_vocab_size", 0) > 1:
        kwargs["token_type_ids"] = token_type_ids
    return kwargs


def load_teacher(folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> TeacherModel:
    """The teacher saved by `prepare_teacher`, in eval mode (probes stay float32)."""
    with _quiet_hf():
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=dtype or torch.float32)
    return TeacherModel(model.to(device), load_probes(Path(folder)).to(device)).eval().requires_grad_(False)


def teacher_word_embeddings(folder: str | Path) -> torch.Tensor:
    """The teacher's word-embedding table (V, H), read alone from model.safetensors."""
    with safe_open(str(Path(folder) / MODEL_FILE), framework="pt") as f:
        names = [k for k in f.keys() if k.endswith("word_embeddings.weight")]  # noqa: SIM118 (safe_open has no __iter__)
        if len(names) != 1:
            raise ValueError(f"{folder}/{MODEL_FILE}: expected one word_embeddings tensor, found {names}")
        return f.get_tensor(names[0])


def teacher_weights(folder: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """The teacher's whole state dict (model.safetensors) and its attention heads (config.json): what a
    small transformer starting from the teacher's own layers reads."""
    folder = Path(folder)
    heads = json.loads((folder / "config.json").read_text()).get("num_attention_heads")
    if heads is None:
        raise ValueError(f"{folder}/config.json has no num_attention_heads: not a BERT-family teacher")
    return load_file(str(folder / MODEL_FILE)), int(heads)


def teacher_cost(folder: str | Path, *, seq_len: int) -> OpCost:
    """The teacher's params and FLOPs per example, from model.safetensors' header alone.

    FLOPs: 2 per weight outside the embedding tables, per token (attention's T^2 terms, a few percent at
    short lengths, are left out).
    """
    params = dense = 0
    with safe_open(str(Path(folder) / MODEL_FILE), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            tensor = f.get_slice(name)
            if not tensor.get_dtype().startswith(("F", "BF")):  # integer buffers (position_ids) are no weights
                continue
            n = math.prod(tensor.get_shape())
            params += n
            dense += 0 if "embeddings" in name else n
    return OpCost(params=params, flops=2.0 * dense * seq_len)


def files_sha256(paths: list[Path]) -> str:
    """One digest over the names and contents of `paths` (sorted by name)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    return [p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()]


def tokenizer_files(folder: Path) -> list[Path]:
    return [p for p in Path(folder).iterdir() if p.is_file() and p.name.startswith(_TOKENIZER_PREFIXES)]


def resolve_backbone(source: str) -> Path:
    """A local folder for `source`: the folder itself, or a hub snapshot (downloaded once)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_absolute() or source.startswith((".", "~")) or path.exists():
        raise ValueError(f"teacher folder not found: {source}")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(source, allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"]))
        if not weight_files(folder):  # older checkpoints ship only pytorch_model.bin
            folder = Path(snapshot_download(source, allow_patterns=["*.bin"]))
    except Exception as exc:  # offline, unknown repo, gated: all one message to the user
        raise ValueError(f"teacher {source!r} is not a local folder and could not be fetched from the hub "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return folder


def teacher_key(*, source: str, weights_sha256: str, data_fingerprint: str, cfg: TeacherConfig) -> str:
    payload = {
        "recipe": TEACHER_RECIPE,
        "backbone": {"source": source, "weights": weights_sha256},
        "data": data_fingerprint,
        "hparams": cfg.model_dump(mode="json", exclude={"model"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def teacher_location(
    *, source: str, cfg: TeacherConfig, prepared_dir: Path, out_root: Path, backbone: Path | None = None
) -> Path:
    """Where `prepare_teacher` keeps (or would keep) this teacher: `<out_root>/<key>`. Trains nothing."""
    backbone = backbone or resolve_backbone(source)
    weights = weight_files(backbone)
    if not weights:
        raise ValueError(f"teacher {source!r}: no *.safetensors or *.bin weights in {backbone}")
    key = teacher_key(source=source, weights_sha256=files_sha256(weights),
                      data_fingerprint=read_meta(prepared_dir).labelled_key, cfg=cfg)
    return Path(out_root) / key


def prepare_teacher(
    *, source: str, cfg: TeacherConfig, prepared_dir: Path, out_root: Path, progress: bool = True
) -> TeacherArtifacts:
    """Fine-tune (when the backbone has no head for the task) and probe the teacher; cached by key."""
    prepared_dir, out_root = Path(prepared_dir), Path(out_root)
    if not is_prepared(prepared_dir):
        raise ValueError(f"no prepared data in {prepared_dir}")
    meta = read_meta(prepared_dir)
    backbone = resolve_backbone(source)
    out = teacher_location(source=source, cfg=cfg, prepared_dir=prepared_dir, out_root=out_root, backbone=backbone)
    key = out.name
    if (out / TEACHER_JSON).is_file():
        say(f"teacher: cache hit {key}")
        return read_artifacts(out, cache_hit=True)

    _check_backbone(backbone, meta=meta, source=source)
    train, dev = _labelled(load_split(prepared_dir, "train")), _labelled(load_split(prepared_dir, "dev"))
    if cfg.max_train_examples is not None:
        train = train.subset(slice(0, cfg.max_train_examples))
    if not len(train) or not len(dev):
        raise ValueError(f"{prepared_dir}: the teacher needs labelled train and dev examples "
                         f"(got {len(train)} and {len(dev)})")

    out_root.mkdir(parents=True, exist_ok=True)
    checkpoint = out_root / f".{key}.fine-tuned"  # the model once fine-tuned: a crashed run resumes here
    torch.manual_seed(cfg.seed)
    with _quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    if (checkpoint / _FINE_TUNED).is_file():
        say(f"teacher: resuming {key} after fine-tuning")
        marker = json.loads((checkpoint / _FINE_TUNED).read_text())
        fine_tuned, training = marker["fine_tuned"], marker.get("training")
        with _quiet_hf():
            model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint), dtype=torch.float32)
    else:
        with _quiet_hf():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(backbone), num_labels=meta.num_labels, output_loading_info=True, ignore_mismatched_sizes=True,
                dtype=torch.float32,
            )
        # A head missing from the checkpoint, or one of another size, is untrained for this task.
        fine_tuned = bool(info["missing_keys"] or info["mismatched_keys"])
        training = None
        if fine_tuned:
            say(f"teacher: fine-tuning {source} on {len(train)} examples ({meta.task})")
            # Where it fine-tuned: another CPU trains other last bits, and the search amplifies them.
            training = {**_fine_tune(model, train=train, dev=dev, meta=meta, cfg=cfg, progress=progress),
                        "hardware": hardware_name("cpu")}
        model.config.id2label = dict(enumerate(meta.label_names))
        model.config.label2id = {name: i for i, name in enumerate(meta.label_names)}
        publish_dir(checkpoint, lambda folder: _save_model(model, tokenizer, folder, fine_tuned=fine_tuned,
                                                           training=training))

    model.eval()
    train_x, _ = _features(model, train, meta=meta, batch_size=4 * cfg.batch_size, progress=progress,
                           desc="teacher: train states")
    dev_x, dev_logits = _features(model, dev, meta=meta, batch_size=4 * cfg.batch_size, progress=progress,
                                  desc="teacher: dev states")
    dev_scores = classification_scores(dev_logits.argmax(dim=-1), dev.labels, num_labels=meta.num_labels)
    dev_score = dev_scores[meta.metric]
    probes = train_probes(train_x, train.labels, num_labels=meta.num_labels, epochs=cfg.probe_epochs,
                          lr=cfg.probe_lr, seed=cfg.seed)
    scores = probe_scores(probes, dev_x, dev.labels, num_labels=meta.num_labels, metric=meta.metric)
    artifacts = TeacherArtifacts(
        dir=out, key=key, cache_hit=False, fine_tuned=fine_tuned, metric=meta.metric, dev_score=dev_score,
        probe_scores=scores, num_layers=dev_x.shape[1] - 1, hidden_size=dev_x.shape[2],
        num_labels=meta.num_labels, dev_scores=dev_scores, training=training,
    )
    record = {k: v for k, v in asdict(artifacts).items() if k not in ("dir", "cache_hit")}
    record |= {"source": source, "data_fingerprint": meta.labelled_key, "config": cfg.model_dump(mode="json"),
               "label_names": list(meta.label_names)}

    def write_teacher(folder: Path) -> None:
        with _quiet_hf():
            model.save_pretrained(str(folder))
            tokenizer.save_pretrained(str(folder))
        save_probes(probes, folder)
        write_probe_scores(folder, scores, metric=meta.metric, teacher_score=dev_score)
        (folder / TEACHER_JSON).write_text(json.dumps(record, indent=2))

    publish_dir(out, write_teacher)
    shutil.rmtree(checkpoint, ignore_errors=True)
    say(f"teacher: saved {key}: dev {METRIC_NAMES[meta.metric]} {dev_score:.4f}; layer probes "
        + " ".join(f"{a:.3f}" for a in scores))
    return artifacts


def _save_model(model: nn.Module, tokenizer, folder: Path, *, fine_tuned: bool, training: dict | None) -> None:
    with _quiet_hf():
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    (folder / _FINE_TUNED).write_text(json.dumps({"fine_tuned": fine_tuned, "training": training}))


def read_artifacts(folder: Path, *, cache_hit: bool) -> TeacherArtifacts:
    record = json.loads((Path(folder) / TEACHER_JSON).read_text())
    return TeacherArtifacts(
        dir=Path(folder), key=record["key"], cache_hit=cache_hit, fine_tuned=record["fine_tuned"],
        # Records written before the task's metric was kept hold accuracies.
        metric=record.get("metric", "accuracy"), dev_score=record.get("dev_score", record.get("dev_accuracy")),
        probe_scores=record.get("probe_scores", record.get("probe_accuracies")),
        num_layers=record["num_layers"], hidden_size=record["hidden_size"], num_labels=record["num_labels"],
        dev_scores=record.get("dev_scores"), training=record.get("training"),
    )


def teacher_fingerprint(folder: Path) -> str:
    """What the teacher computes: its weights, probes and config."""
    folder = Path(folder)
    return files_sha256([folder / MODEL_FILE, folder / PROBES_FILE, folder / "config.json"])


def _check_backbone(folder: Path, *, meta: PreparedMeta, source: str) -> None:
    """Cheap config checks before any weights load."""
    with _quiet_hf():
        config = AutoConfig.from_pretrained(str(folder))
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and meta.vocab_size > vocab:
        raise ValueError(f"teacher {source!r} has {vocab} tokens but the data was tokenized with "
                         f"{meta.vocab_size} ({meta.tokenizer}); prepare the data with the teacher's tokenizer")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and meta.max_length > positions:
        raise ValueError(f"max_length {meta.max_length} exceeds the teacher's {positions} positions")


def _labelled(split: TargetSplit) -> TargetSplit:
    return split.subset(torch.nonzero(split.labels >= 0).flatten())


def _fine_tune(model: nn.Module, *, train: TargetSplit, dev: TargetSplit, meta: PreparedMeta, cfg: TeacherConfig,
               progress: bool) -> dict:
    """AdamW with linear warm-up and decay, at least cfg.min_steps steps; early stopping on the task's
    metric once those are done; keeps the best weights. Returns its log: steps, the dev score (the
    task's metric) at each evaluation, whether it stopped early."""
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    total = steps_per_epoch * epochs
    eval_steps = {max(1, round(steps_per_epoch * (i + 1) / cfg.evals_per_epoch)) for i in range(cfg.evals_per_epoch)}
    weights = class_weights(train.labels, num_labels=meta.num_labels) if cfg.balance_classes else None  # (C,)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases and LayerNorm weights
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    opt = adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    schedule = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    best, best_state, stale, done, history = -1.0, None, 0, 0, []
    bar = tqdm(total=total, desc="teacher: fine-tune", disable=None if progress else True, file=sys.stderr)
    try:
        for epoch in range(epochs):
            model.train()
            batches = train.batches(batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)
            for step, batch in enumerate(batches, 1):
                inputs = _inputs(batch, meta)
                logits = model(**_model_kwargs(model, **inputs)).logits  # (B, C)
                loss = nn.functional.cross_entropy(logits, batch["labels"], weight=weights)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                schedule.step()
                opt.zero_grad(set_to_none=True)
                done += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", dev=f"{best:.4f}" if best >= 0 else "-")
                if step not in eval_steps:
                    continue
                model.eval()
                _, dev_logits = _features(model, dev, meta=meta, batch_size=4 * cfg.batch_size, progress=False)
                model.train()
                score = classification_scores(dev_logits.argmax(dim=-1), dev.labels,
                                              num_labels=meta.num_labels)[meta.metric]
                history.append(score)
                if progress:
                    bar.write(f"teacher: epoch {epoch + 1} step {step}/{steps_per_epoch}: dev {meta.metric} "
                              f"{score:.4f}", file=sys.stderr)
                if score > best:
                    best, stale = score, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elif done >= cfg.min_steps:
                    stale += 1
                    if stale > cfg.patience:
                        return {"steps": done, "dev_history": history, "stopped_early": True}
        return {"steps": done, "dev_history": history, "stopped_early": False}
    finally:
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)


def class_weights(labels: torch.Tensor, *, num_labels: int) -> torch.Tensor:
    """(C,) inverse class frequency n / (C' * n_c) over the C' classes present: 1 for every class of a
    balanced split, and the weighted loss keeps its scale; classes absent from `labels` get 0."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_labels).float()
    present = int((counts > 0).sum())
    return torch.where(counts > 0, counts.sum() / (present * counts.clamp_min(1)), torch.zeros_like(counts))


def _inputs(batch: dict[str, torch.Tensor], meta: PreparedMeta) -> dict[str, torch.Tensor]:
    return teacher_inputs(batch, cls_id=meta.cls_id, sep_id=meta.sep_id, pad_id=meta.pad_id)


def length_sorted_batches(split: TargetSplit, *, batch_size: int) -> Iterator[tuple[torch.Tensor, dict]]:
    """(row index, batch) in order of length: far less padding when order does not matter."""
    lengths = split.len_a + (split.len_b if split.len_b is not None else 0)
    order = torch.argsort(lengths, stable=True)
    for start in range(0, len(split), batch_size):
        index = order[start:start + batch_size]
        yield index, split.batch(index)


@torch.inference_mode()
def _features(model: nn.Module, split: TargetSplit, *, meta: PreparedMeta, batch_size: int, progress: bool,
              desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled states of every layer (N, L+1, H) and logits (N, C) of the model in eval mode."""
    pooled = logits = None
    bar = tqdm(total=len(split), desc=desc, disable=None if progress else True, file=sys.stderr)
    for index, batch in length_sorted_batches(split, batch_size=batch_size):
        inputs = _inputs(batch, meta)
        out = model(**_model_kwargs(model, **inputs), output_hidden_states=True)
        states = pool_layers(out.hidden_states, inputs["attention_mask"]).float()  # (B, L+1, H)
        if pooled is None:
            pooled = torch.empty(len(split), *states.shape[1:])
            logits = torch.empty(len(split), out.logits.shape[-1])
        pooled[index], logits[index] = states, out.logits.float()
        bar.update(len(index))
    bar.close()
    return pooled, logits



@contextmanager
def _quiet_hf():
    """transformers' load reports and progress bars say nothing our own messages don't."""
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def teacher_scores(folder: str | Path, prepared_dir: str | Path, *, splits: tuple[str, ...] = ("dev", "test"),
                   batch_size: int = 128) -> dict[str, dict[str, float]]:
    """{split: {"accuracy", "f1_macro"}} of the saved teacher on prepared splits."""
    meta = read_meta(prepared_dir)
    with _quiet_hf():
        model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    out = {}
    for split in splits:
        data = load_split(prepared_dir, split)
        _, logits = _features(model, data, meta=meta, batch_size=batch_size, progress=False)
        out[split] = classification_scores(logits.argmax(dim=-1), data.labels, num_labels=meta.num_labels)
    return out
