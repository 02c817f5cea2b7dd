"""search_space: the genotype as data and its derivation from alpha."""

import json

import pytest
import torch

from search_space import PRIMITIVES, Genotype, derive_genotype, edge_index, num_edges

OP = {name: i for i, name in enumerate(PRIMITIVES)}


def test_edge_layout():
    assert [num_edges(n) for n in (1, 2, 3, 4)] == [2, 5, 9, 14]
    order = [(j, i) for j in range(3) for i in range(2 + j)]
    assert [edge_index(j, i) for j, i in order] == list(range(9))
    with pytest.raises(ValueError):
        edge_index(0, 2)  # node 0 only sees the two cell inputs


def _alpha(best: dict[tuple[int, int], dict[str, float]]) -> torch.Tensor:
    """(9, n_ops) logits: 0 everywhere except the given (node, input) -> {op: logit}."""
    alpha = torch.zeros(num_edges(3), len(PRIMITIVES))
    for (j, i), ops in best.items():
        for name, value in ops.items():
            alpha[edge_index(j, i), OP[name]] = value
    return alpha


def test_derive_skips_zero_ranks_inputs_and_picks_depth():
    alpha = _alpha(
        {
            (0, 0): {"zero": 9.0, "max_pool_3": 5.0},  # zero wins the edge, but is never kept
            (0, 1): {"conv_5": 3.0},
            (1, 0): {"identity": 1.0},
            (1, 1): {"dil_conv_3": 2.0},
            (1, 2): {"avg_pool_3": 4.0},
            (2, 0): {"conv_7": 0.5},
            (2, 1): {"conv_3": 6.0},
            (2, 2): {"identity": 0.2},
            (2, 3): {"dil_conv_7": 7.0},
        }
    )
    depth_logits = torch.tensor([0.1, 2.0, 0.3])
    genotype = derive_genotype(alpha, depth_logits)
    # Edge (0, 0) keeps its best op other than zero; node 2 keeps inputs 1 and 3 (its best two).
    assert genotype == Genotype(
        depth=2,
        nodes=(
            (("max_pool_3", 0), ("conv_5", 1)),
            (("dil_conv_3", 1), ("avg_pool_3", 2)),
            (("conv_3", 1), ("dil_conv_7", 3)),
        ),
    )


def test_derive_ranks_inputs_by_weight_after_softmax():
    # Input 0 has the larger logit for its best op, but a zero op takes most of its mass.
    alpha = _alpha(
        {
            (1, 0): {"conv_3": 5.0, "zero": 8.0},
            (1, 1): {"conv_5": 4.0},
            (1, 2): {"conv_7": 3.0},
        }
    )
    genotype = derive_genotype(alpha, torch.zeros(2))
    assert genotype.nodes[1] == (("conv_5", 1), ("conv_7", 2))


def test_derive_ties_and_probabilities():
    uniform = derive_genotype(torch.zeros(9, len(PRIMITIVES)), torch.zeros(4))
    assert uniform == Genotype(depth=1, nodes=((("conv_3", 0), ("conv_3", 1)),) * 3)

    torch.manual_seed(0)
    alpha, depth_logits = torch.randn(9, len(PRIMITIVES), requires_grad=True), torch.randn(8)
    before = alpha.detach().clone()
    from_logits = derive_genotype(alpha, depth_logits)
    assert derive_genotype(alpha.softmax(-1), depth_logits) == from_logits  # same ranking
    assert torch.equal(alpha.detach(), before)  # pure


def test_derive_with_custom_primitives_and_bad_shapes():
    primitives = ("zero", "identity", "conv_3")
    alpha = torch.zeros(2, 3)
    alpha[0] = torch.tensor([5.0, 1.0, 2.0])
    genotype = derive_genotype(alpha, torch.tensor([1.0]), primitives=primitives)
    assert genotype == Genotype(depth=1, nodes=((("conv_3", 0), ("identity", 1)),))
    with pytest.raises(ValueError, match="alpha"):
        derive_genotype(torch.zeros(9, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="edges"):
        derive_genotype(torch.zeros(7, len(PRIMITIVES)), torch.zeros(2))


GENOTYPE = Genotype(
    depth=3,
    nodes=(
        (("conv_3", 0), ("identity", 1)),
        (("dil_conv_5", 1), ("zero", 2)),
        (("max_pool_3", 0), ("identity", 3)),
    ),
)


def test_genotype_round_trips():
    assert Genotype.from_dict(GENOTYPE.to_dict()) == GENOTYPE
    assert Genotype.from_json(GENOTYPE.to_json()) == GENOTYPE
    assert Genotype.from_dict(json.loads(json.dumps(GENOTYPE.to_dict()))) == GENOTYPE
    assert Genotype.from_json(GENOTYPE.to_json()).to_json() == GENOTYPE.to_json()
    assert hash(Genotype.from_json(GENOTYPE.to_json())) == hash(GENOTYPE)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"depth": 0, "nodes": [[["conv_3", 0], ["conv_3", 1]]]}, "depth"),
        ({"depth": 1, "nodes": []}, "at least one"),
        ({"depth": 1, "nodes": [[["conv_9", 0], ["conv_3", 1]]]}, "unknown op"),
        ({"depth": 1, "nodes": [[["conv_3", 0], ["conv_3", 2]]]}, "input"),
        ({"depth": 1, "nodes": [[["conv_3", 1], ["conv_3", 1]]]}, "share input"),
        ({"depth": 1, "nodes": [[["conv_3", 0]]]}, "exactly 2"),
        ({"depth": 1, "nodes": [["conv_3"]]}, "nodes must be"),
        ({"depth": 1}, "keys"),
        ({"depth": 1, "nodes": [], "extra": 1}, "keys"),
    ],
)
def test_genotype_from_dict_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        Genotype.from_dict(bad)


def test_op_counts_and_share():
    assert GENOTYPE.op_counts() == {"conv_3": 1, "identity": 2, "dil_conv_5": 1, "zero": 1, "max_pool_3": 1}
    assert GENOTYPE.share_of(["identity", "zero"]) == pytest.approx(0.5)
    assert GENOTYPE.share_of([]) == 0.0
