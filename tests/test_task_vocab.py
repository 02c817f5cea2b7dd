"""The task vocabulary: a student keeps only the embedding rows of the ids its task uses."""

import pytest
import torch

from search_space import Genotype, SearchSpaceConfig
from search_space.layers import KroneckerTable, kronecker_shapes
from search_space.student import Student, keep_vocabulary, task_token_ids

SPACE = SearchSpaceConfig(embed_dim=8, k_max=3)
GENOTYPE = Genotype(depth=2, nodes=((("conv_3", 0), ("dil_conv_5", 1)), (("max_pool_3", 0), ("conv_7", 2)),
                                    (("avg_pool_3", 1), ("identity", 3))))
VOCAB, PAD, UNK = 60, 0, 1


def _student() -> Student:
    torch.manual_seed(0)
    return Student(GENOTYPE, space=SPACE, vocab_size=VOCAB, num_labels=3, pad_id=PAD).eval()


def test_in_vocabulary_text_gets_exactly_the_same_outputs_and_other_ids_read_unk():
    full = _student()
    train = torch.tensor([[5, 6, 7, 0, 0], [7, 8, 9, 10, 0]])  # (N, T) padded with PAD
    keep = task_token_ids(train, special_ids=(PAD, UNK))
    assert keep.tolist() == [0, 1, 5, 6, 7, 8, 9, 10]
    small = keep_vocabulary(full, keep, unk_id=UNK)
    assert small.embedding.table.num_embeddings == 8
    saved = (VOCAB - 8) * SPACE.embed_dim
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in small.parameters()) == saved

    ids = torch.tensor([[10, 9, 8, 7, 6, 5], [5, 5, 7, 0, 0, 0]])
    mask = ids != PAD
    torch.testing.assert_close(small(ids, mask).logits, full(ids, mask).logits, rtol=0, atol=0)
    pair = small(ids, mask, ids.flip(1), mask.flip(1)).logits
    torch.testing.assert_close(pair, full(ids, mask, ids.flip(1), mask.flip(1)).logits, rtol=0, atol=0)
    unseen = torch.tensor([[5, 42, 7, 59]])  # 42 and 59 never occur in train
    torch.testing.assert_close(small(unseen, None).logits, full(torch.tensor([[5, UNK, 7, UNK]]), None).logits,
                               rtol=0, atol=0)


def test_a_task_vocabulary_student_rebuilds_from_its_config_and_weights():
    small = keep_vocabulary(_student(), torch.tensor([0, 1, 3, 4]), unk_id=UNK)
    config = small.config_dict()
    assert config["embedding_rows"] == 4
    again = Student.from_config_dict(config)
    again.load_state_dict(small.state_dict())
    ids = torch.tensor([[3, 4, 50, 0]])
    torch.testing.assert_close(again.eval()(ids, ids != PAD).logits, small(ids, ids != PAD).logits)
    assert Student.from_config_dict(_student().config_dict()).embedding.id_map is None  # full table, no map


@pytest.mark.parametrize(("keep", "message"), [
    (torch.tensor([0, 3, 4]), "UNK"),  # no [UNK] row
    (torch.tensor([1, 3, 4]), "pad"),
    (torch.tensor([0, 1, VOCAB]), "lie in"),
])
def test_keep_vocabulary_refuses_what_it_cannot_map(keep, message):
    with pytest.raises(ValueError, match=message):
        keep_vocabulary(_student(), keep, unk_id=UNK)
    small = keep_vocabulary(_student(), torch.tensor([0, 1]), unk_id=UNK)
    with pytest.raises(ValueError, match="already"):
        keep_vocabulary(small, torch.tensor([0, 1]), unk_id=UNK)


def test_a_low_rank_table_is_the_best_rank_r_fit_of_its_init_and_keeps_a_task_vocabulary():
    """LadaBERT's low-rank embedding: an init of rank <= r is reproduced exactly, rows then map
    through `up`; it counts V*r + r*d parameters, and a task vocabulary slices its rows alike."""
    space = SearchSpaceConfig(embed_dim=8, k_max=3, embedding_rank=3)
    torch.manual_seed(0)
    init = torch.randn(VOCAB, 3) @ torch.randn(3, 8)  # (V, d) of rank 3
    init[PAD] = 0
    low = Student(GENOTYPE, space=space, vocab_size=VOCAB, num_labels=3, pad_id=PAD, embedding_init=init).eval()
    torch.testing.assert_close(low.embedding.up(low.embedding.table.weight), init, atol=1e-4, rtol=0)
    full = Student(GENOTYPE, space=SPACE, vocab_size=VOCAB, num_labels=3, pad_id=PAD).eval()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(full) - count(low) == VOCAB * 8 - (VOCAB * 3 + 3 * 8)

    small = keep_vocabulary(low, torch.tensor([0, 1, 5, 6, 7]), unk_id=UNK)
    assert tuple(small.embedding.table.weight.shape) == (5, 3)
    ids = torch.tensor([[5, 6, 7, 0], [7, 42, 5, 6]])
    want = low(torch.tensor([[5, 6, 7, 0], [7, UNK, 5, 6]]), ids != PAD).logits
    torch.testing.assert_close(small(ids, ids != PAD).logits, want, rtol=0, atol=0)
    again = Student.from_config_dict(small.config_dict())
    again.load_state_dict(small.state_dict())
    torch.testing.assert_close(again.eval()(ids, ids != PAD).logits, want, rtol=0, atol=0)


@pytest.mark.parametrize("rank", [0, 8, 9, 2.5, True])
def test_an_embedding_rank_outside_1_to_embed_dim_is_refused(rank):
    with pytest.raises(ValueError, match="embedding_rank"):
        SearchSpaceConfig(embed_dim=8, embedding_rank=rank)


@pytest.mark.parametrize(("rows", "dim"), [(60, 8), (30522, 128), (13524, 384), (2, 7), (1, 1)])
def test_kronecker_shapes_cover_the_table(rows, dim):
    v1, v2, d1, d2 = kronecker_shapes(rows, dim)
    assert d1 * d2 == dim and d1 <= d2 and v1 * v2 >= rows > (v1 - 1) * v2


def test_a_kronecker_table_is_the_nearest_kronecker_sum_of_its_init():
    """KroneckerBERT's table: an init that is a sum of k Kronecker products is reproduced exactly by k
    terms; fewer terms fit it less well; it counts k * (v1*d1 + v2*d2) parameters and has no rows to drop."""
    vocab = 64  # v1 * v2 exactly: no padding rows, so a Kronecker sum is one exactly
    v1, v2, d1, d2 = kronecker_shapes(vocab, 8)
    torch.manual_seed(0)
    init = sum(torch.kron(torch.randn(v1, d1), torch.randn(v2, d2)) for _ in range(2))  # (V, d)
    ids = torch.arange(vocab)[None, :]
    errors = []
    for terms in (1, 2):
        table = KroneckerTable(vocab, 8, terms=terms, init=init)
        assert sum(p.numel() for p in table.parameters()) == terms * (v1 * d1 + v2 * d2)
        errors.append(float((table(ids)[0] - init).detach().norm() / init.norm()))
    assert errors[1] < 1e-5 < 0.01 < errors[0]
    space = SearchSpaceConfig(embed_dim=8, k_max=3, embedding_kronecker=2)
    kron = Student(GENOTYPE, space=space, vocab_size=vocab, num_labels=3, pad_id=PAD, embedding_init=init).eval()
    x = kron.embedding.embed_tokens(ids, ids >= 0)[0]  # (V, d), eval: no dropout
    torch.testing.assert_close(x, init, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no rows to drop"):
        keep_vocabulary(kron, torch.tensor([0, 1, 5]), unk_id=UNK)


def test_rank_and_kronecker_are_one_choice():
    with pytest.raises(ValueError, match="not both"):
        SearchSpaceConfig(embed_dim=8, embedding_rank=2, embedding_kronecker=2)
    with pytest.raises(ValueError, match="embedding_kronecker"):
        SearchSpaceConfig(embed_dim=8, embedding_kronecker=0)
