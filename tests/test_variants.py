"""Serving variants (issue 9): a retrained student exported for onnxruntime, scored and timed as a
student of its own, served by predict, and registered and pulled like any student."""

import json

import mlflow
import pytest
import torch
from test_onnx_export import GENOTYPE, MINILM, SPACE, TRANSFORMER
from test_teacher import make_prepared
from tiny_jobs import tiny_job

from orchestrator.cli import main
from orchestrator.config import parse_job
from orchestrator.measure import student_latency
from orchestrator.tracking import Tracker, pull_student
from search_space.student import Student, keep_vocabulary
from search_space.transformer import SmallTransformer
from workers.dataset import load_split, read_meta
from workers.metrics import classification_scores
from workers.onnx_export import ONNX_FILE, onnx_predictions
from workers.retrain import predict_classes
from workers.student import StudentPredictor, load_student, save_student
from workers.student_files import LATENCY_FILE, METRICS_FILE, WEIGHTS_FILE, is_onnx_student
from workers.variants import make_variant

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("variants") / "prepared", sizes=(16, 8, 64, 32))


def _retrained(folder, prepared, arch) -> tuple:
    """A student saved as retrain saves one: config, weights, tokenizer, its scores and a timing."""
    torch.manual_seed(0)
    meta = read_meta(prepared)
    if arch is TRANSFORMER:
        student = SmallTransformer(arch, vocab_size=30522, num_labels=2, max_positions=80, pad_id=0)
    else:
        student = Student(arch, space=SPACE, vocab_size=30522, num_labels=2, pad_id=0)
    student = keep_vocabulary(student, torch.arange(5000), unk_id=100).eval()
    save_student(student, folder, tokenizer_dir=MINILM, extra={
        "label_names": list(meta.label_names), "pair": False, "max_length": meta.max_length, "exit_threshold": 0.4})
    scores = {}
    for name in ("dev", "test"):
        split = load_split(prepared, name)
        got = classification_scores(predict_classes(student, split, batch_size=16), split.labels, num_labels=2)
        scores[f"{name}_metric"] = got["accuracy"]
    (folder / METRICS_FILE).write_text(json.dumps({**scores, "metric": "accuracy", "params": 12345, "flops": 1.0,
                                                   "exit_threshold": 0.4, "exit_curve": []}))
    (folder / LATENCY_FILE).write_text("{}")  # torch's timing: never the variant's
    return student, folder


@pytest.mark.parametrize("arch", [GENOTYPE, TRANSFORMER], ids=["cells", "transformer"])
def test_an_fp32_variant_predicts_what_its_torch_parent_predicts(tmp_path, prepared, arch):
    student, parent = _retrained(tmp_path / "parent", prepared, arch)
    metrics = make_variant(parent, tmp_path / "onnx", variant="onnx", prepared_dir=prepared)
    out = tmp_path / "onnx"
    assert is_onnx_student(out) and not (out / WEIGHTS_FILE).exists() and not (out / LATENCY_FILE).exists()
    dev = load_split(prepared, "dev")
    assert torch.equal(onnx_predictions(out / ONNX_FILE, dev), predict_classes(student, dev, batch_size=16))
    parent_metrics = json.loads((parent / METRICS_FILE).read_text())
    assert metrics["dev_metric"] == parent_metrics["dev_metric"] and metrics["test_metric"] == parent_metrics["test_metric"]
    assert metrics["params"] == 12345 and metrics["variant"] == "onnx" and metrics["max_logit_diff"] <= 1e-4
    assert "exit_curve" not in metrics and json.loads((out / "config.json").read_text())["exit_threshold"] == 0.0

    texts = ["a warm and funny film", "dull, lifeless and far too long", "ok"]
    served = StudentPredictor.from_pretrained(out).predict(texts)
    want = StudentPredictor.from_pretrained(parent).predict(texts, exit_threshold=0)
    for got, ref in zip(served, want, strict=True):
        assert got["label"] == ref["label"]
        assert got["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-4)
    with pytest.raises(ValueError, match="ONNX graph"):
        StudentPredictor.from_pretrained(out).predict(texts, exit_threshold=0.5)
    with pytest.raises(ValueError, match="onnxruntime"):
        load_student(out)


def test_an_int8_variant_is_scored_timed_and_kept(tmp_path, prepared):
    _, parent = _retrained(tmp_path / "parent", prepared, GENOTYPE)
    out = tmp_path / "int8"
    metrics = make_variant(parent, out, variant="onnx-int8", prepared_dir=prepared)
    assert 0 < metrics["max_logit_diff"] < 0.05 and 0 <= metrics["dev_metric"] <= 1
    fp32 = make_variant(parent, tmp_path / "fp32", variant="onnx", prepared_dir=prepared)
    table_mb = 5000 * 16 * 4 / 1e6  # the fp32 table; the int64 id map stays as it is in both
    assert metrics["file_mb"] < fp32["file_mb"] - 0.7 * table_mb  # int8 rows: a quarter of the bytes, plus scales
    stamp = (out / METRICS_FILE).stat().st_mtime_ns
    assert make_variant(parent, out, variant="onnx-int8", prepared_dir=prepared) == metrics  # kept, not redone
    assert (out / METRICS_FILE).stat().st_mtime_ns == stamp

    timed = student_latency(out, seq_len=16, repeats=2, threads=1)
    assert timed["runtime"] == "onnxruntime" and timed["params"] == 12345 and timed["threads"] == 1
    assert 0 < timed["latency_b1_ms"] <= timed["latency_b1_p95_ms"]
    with pytest.raises(ValueError, match="unknown variant"):
        make_variant(parent, tmp_path / "x", variant="int4", prepared_dir=prepared)
    assert not (tmp_path / "x").exists()


def test_a_registered_variant_is_pulled_and_served_like_any_student(tmp_path, prepared, capsys):
    _, parent = _retrained(tmp_path / "parent", prepared, GENOTYPE)
    variant = tmp_path / "int8"
    make_variant(parent, variant, variant="onnx-int8", prepared_dir=prepared)
    job = parse_job(tiny_job(tmp_path / "ws"))
    tracker = Tracker(job, task_name="tiny")
    run_id, _ = tracker.ensure_run("tiny/student-x", name="student-x", role="retrain")
    version = tracker.register_student(run_id=run_id, student_dir=variant, key="tiny/x-onnx-int8",
                                       tags={"variant": "onnx-int8"}, input_example=["a great movie"])
    assert "Created version" not in capsys.readouterr().err  # the job's summary names the version, not MLflow
    pulled = pull_student(f"{tracker.model_name}/{version}", dst=tmp_path / "pulled", tracking_uri=tracker.uri)
    assert is_onnx_student(pulled)
    model = mlflow.pyfunc.load_model(f"models:/{tracker.model_name}/{version}")
    from_registry = model.predict(["a warm and funny film"])
    local = StudentPredictor.from_pretrained(pulled).predict(["a warm and funny film"])
    assert from_registry[0].label == local[0]["label"]
    assert main(["predict", str(pulled), "--text", "a warm and funny film", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label"] == local[0]["label"]
    # Exporting what a job already exported: the graph as it is, or one line when asked for other weights.
    assert main(["export", str(pulled), "-o", str(tmp_path / "fp32"), "--onnx"]) == 2
    assert "already an ONNX graph with int8 weights" in capsys.readouterr().err and not (tmp_path / "fp32").exists()
    assert main(["export", str(pulled), "-o", str(tmp_path / "again"), "--onnx", "--int8"]) == 0
    assert (tmp_path / "again" / ONNX_FILE).read_bytes() == (variant / ONNX_FILE).read_bytes()
    assert not (tmp_path / "again" / METRICS_FILE).exists()
