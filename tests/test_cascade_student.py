"""A cascade as the job ships it: one folder holding its two students, scored as served, timed on real texts,
served by predict, registered, pulled and refused where it cannot go."""

import json
import shutil

import mlflow
import pytest
import torch
from test_onnx_export import GENOTYPE, TRANSFORMER
from test_variants import _retrained
from tiny_jobs import tiny_job

from orchestrator.cli import main
from orchestrator.config import parse_job
from orchestrator.measure import cascade_timeable, time_models
from orchestrator.tracking import Tracker, pull_student
from workers.cascade_student import make_cascade
from workers.dataset import load_split
from workers.latency import WARMUP_CALLS
from workers.metrics import classification_scores
from workers.student import StudentPredictor, load_student
from workers.student_files import CONFIG_FILE, METRICS_FILE, is_cascade_student, is_student_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["a warm and funny film", "dull, lifeless and far too long", "ok", "the best of the year", "meh"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from test_teacher import make_prepared

    root = tmp_path_factory.mktemp("cascade")
    prepared = make_prepared(root / "prepared", sizes=(16, 40, 64, 32))
    _, front = _retrained(root / "front", prepared, GENOTYPE)
    _, back = _retrained(root / "back", prepared, TRANSFORMER)
    return prepared, front, back


def _expected(front, back, texts, threshold):
    """What the cascade must answer: the front's probabilities where it is sure, else the back's."""
    f = StudentPredictor.from_pretrained(front).predict(texts, exit_threshold=0)
    b = StudentPredictor.from_pretrained(back).predict(texts, exit_threshold=0)
    return [x if max(x["probabilities"].values()) >= threshold else y for x, y in zip(f, b, strict=True)]


@pytest.mark.parametrize("defer", [0.25, 0.75])
def test_a_cascade_folder_answers_as_its_two_students_would_and_is_scored_so(tmp_path, pair, defer):
    prepared, front, back = pair
    out = tmp_path / "cascade"
    metrics = make_cascade(front, back, out, defer=defer, prepared_dir=prepared)
    assert is_cascade_student(out) and is_student_folder(out) and not is_cascade_student(front)
    served = StudentPredictor.from_pretrained(out).predict(TEXTS)
    for got, want in zip(served, _expected(front, back, TEXTS, metrics["threshold"]), strict=True):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    # dev's score: the front's class where it is sure, the back's elsewhere, from the two students' own outputs
    dev = load_split(prepared, "dev")
    probs = {}
    for name, folder in (("front", front), ("back", back)):
        model = load_student(folder)
        with torch.inference_mode():
            probs[name] = torch.cat([model(b["ids_a"], b["mask_a"]).logits.softmax(-1) for b in dev.batches(batch_size=64)])
    unsure = probs["front"].max(-1).values < metrics["threshold"]
    classes = torch.where(unsure, probs["back"].argmax(-1), probs["front"].argmax(-1))
    assert metrics["dev_metric"] == pytest.approx(classification_scores(classes, dev.labels, num_labels=2)["accuracy"])
    assert metrics["deferred_dev"] == pytest.approx(unsure.float().mean().item())
    assert metrics["params"] == 2 * 12345 and metrics["defer"] == defer  # both students are loaded to serve it
    stamp = (out / METRICS_FILE).stat().st_mtime_ns
    assert make_cascade(front, back, out, defer=defer, prepared_dir=prepared) == metrics  # kept, not rebuilt
    assert (out / METRICS_FILE).stat().st_mtime_ns == stamp


def test_more_deferred_on_search_valid_means_more_deferred_on_dev(tmp_path, pair):
    prepared, front, back = pair
    shares = [make_cascade(front, back, tmp_path / str(d), defer=d, prepared_dir=prepared)["deferred_dev"]
              for d in (0.1, 0.5, 0.9)]
    assert shares == sorted(shares) and shares[0] < shares[-1]


def test_students_of_other_tasks_or_tokenizers_are_refused_before_anything_is_written(tmp_path, pair):
    prepared, front, back = pair
    other = tmp_path / "other"
    shutil.copytree(back, other)
    config = json.loads((other / CONFIG_FILE).read_text())
    (other / CONFIG_FILE).write_text(json.dumps({**config, "label_names": ["a", "b"]}))
    with pytest.raises(ValueError, match="label_names"):
        make_cascade(front, other, tmp_path / "x", defer=0.1, prepared_dir=prepared)
    shutil.copytree(back, tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="different tokenizers"):
        make_cascade(front, tmp_path / "tok", tmp_path / "x", defer=0.1, prepared_dir=prepared)
    assert not (tmp_path / "x").exists()


def test_a_cascade_is_timed_on_real_texts_by_the_mean_per_call(tmp_path, pair):
    prepared, front, back = pair
    out = tmp_path / "cascade"
    make_cascade(front, back, out, defer=0.5, prepared_dir=prepared)
    timed = time_models({"cascade": cascade_timeable(out, seq_len=16, prepared_dir=prepared)}, seq_len=16, repeats=3,
                        threads=1)["cascade"]
    assert timed["runtime"] == "cascade" and timed["params"] == 2 * 12345 and timed["threads"] == 1
    for b in (1, 128):
        assert 0 < timed[f"latency_b{b}_ms"] <= timed[f"latency_b{b}_p95_ms"] and timed[f"latency_b{b}_mean_ms"] > 0


def test_a_cascades_timed_calls_walk_dev_in_order_past_the_warm_up(tmp_path, pair, monkeypatch):
    """Each block's warm-up calls repeat one batch, so the timed calls alone cover dev: a cascade's cost depends
    on which texts it sees."""
    from orchestrator.measure import _load_cascade

    prepared, front, back = pair
    out = tmp_path / "cascade"
    make_cascade(front, back, out, defer=0.5, prepared_dir=prepared)
    calls = []
    monkeypatch.setattr("workers.cascade_student.load_cascade", lambda folder: lambda ids, mask: calls.append(ids))
    call_at, _ = _load_cascade(out, prepared, 16, 1)
    timed = []
    for _ in range(3):  # blocks of the warm-up, then 2 timed calls
        fn = call_at(1)
        for _ in range(WARMUP_CALLS[1] + 2):
            fn()
        timed += calls[-2:]
    dev = load_split(prepared, "dev")
    for i, ids in enumerate(timed):
        row = dev.batch(torch.tensor([i]))["ids_a"][0]  # (T,), then padded to 16
        assert ids.shape == (1, 16) and torch.equal(ids[0, : len(row)], row)


def test_a_registered_cascade_is_pulled_whole_and_served(tmp_path, pair, capsys):
    prepared, front, back = pair
    cascade = tmp_path / "cascade"
    make_cascade(front, back, cascade, defer=0.5, prepared_dir=prepared)
    tracker = Tracker(parse_job(tiny_job(tmp_path / "ws")), task_name="tiny")
    run_id, _ = tracker.ensure_run("tiny/student-c", name="student-c", role="retrain")
    version = tracker.register_student(run_id=run_id, student_dir=cascade, key="tiny/c", tags={"route": "cascade"},
                                       input_example=["a great movie"])
    pulled = pull_student(f"{tracker.model_name}/{version}", dst=tmp_path / "pulled", tracking_uri=tracker.uri)
    assert is_cascade_student(pulled) and pulled == tmp_path / "pulled"
    local = StudentPredictor.from_pretrained(pulled).predict(TEXTS)
    assert local == StudentPredictor.from_pretrained(cascade).predict(TEXTS)
    served = mlflow.pyfunc.load_model(f"models:/{tracker.model_name}/{version}").predict(TEXTS)
    assert [r.label for r in served] == [r["label"] for r in local]
    with pytest.raises(ValueError, match="holds a cascade"):
        load_student(pulled)
    assert main(["export", str(pulled), "-o", str(tmp_path / "onnx"), "--onnx"]) == 2  # one line, nothing written
    assert "holds a cascade of two students" in capsys.readouterr().err and not (tmp_path / "onnx").exists()
