"""search_space: the cost model, the efficiency loss and latency measurement."""

import pytest
import torch

from search_space import (
    OPS,
    PRIMITIVES,
    Genotype,
    OpCost,
    SearchSpaceConfig,
    efficiency_loss,
    expected_flops,
    expected_params,
    genotype_params_flops,
    normalised_cost_vector,
    op_costs,
)
from workers.latency import op_latency_table

D, T = 16, 10
COSTS = op_costs(primitives=PRIMITIVES, dim=D, seq_len=T)


@pytest.mark.parametrize("name", PRIMITIVES)
def test_analytic_params_match_the_modules(name):
    assert COSTS[name].params == sum(p.numel() for p in OPS[name](D).parameters())


def test_op_costs_values_and_order():
    assert list(COSTS) == list(PRIMITIVES)
    assert COSTS["conv_5"].params == D * D * 5 + D
    assert COSTS["dil_conv_7"].flops == 2 * D * D * 7 * T
    assert COSTS["avg_pool_3"] == COSTS["max_pool_3"]
    assert COSTS["max_pool_3"].params == 0 and COSTS["max_pool_3"].flops == 3 * D * T
    assert COSTS["identity"].flops == COSTS["zero"].flops == 0


def test_params_flops_cost_vector():
    vec = normalised_cost_vector(COSTS)
    assert vec.shape == (len(PRIMITIVES),)
    assert vec.max().item() == pytest.approx(1.0)
    by_name = dict(zip(PRIMITIVES, vec.tolist(), strict=True))
    assert by_name["conv_7"] == by_name["dil_conv_7"] == pytest.approx(1.0)
    assert by_name["conv_3"] < by_name["conv_5"] < by_name["conv_7"]
    assert 0 < by_name["max_pool_3"] < by_name["conv_3"]
    assert by_name["identity"] == by_name["zero"] == 0.0


def test_teacher_share_cost_vector():
    teacher = OpCost(params=1000 * D * D, flops=2000.0 * D * D * T)
    vec = normalised_cost_vector(COSTS, reference=teacher, kept_edges=12)
    by_name = dict(zip(PRIMITIVES, vec.tolist(), strict=True))
    conv_3 = COSTS["conv_3"]
    assert by_name["conv_3"] == pytest.approx((conv_3.params / teacher.params + conv_3.flops / teacher.flops) / 2 * 12)
    assert by_name["conv_3"] < by_name["conv_5"] < by_name["conv_7"] < 0.1  # flat: a few percent of the teacher
    assert by_name["identity"] == by_name["zero"] == 0.0
    # Same order as the max-normalised costs, on a scale set by the teacher instead of the costliest op.
    assert vec.argsort().tolist() == normalised_cost_vector(COSTS).argsort().tolist()
    # A latency table keeps its own shape on the same scale: its costliest op costs what conv_7 costs here.
    table = {name: float(i + 1) for i, name in enumerate(PRIMITIVES)}
    by_latency = normalised_cost_vector(COSTS, reference=teacher, kept_edges=12, source="latency", latency_table=table)
    assert by_latency.max().item() == pytest.approx(vec.max().item())
    assert by_latency.argsort().tolist() == list(range(len(PRIMITIVES)))


def test_teacher_cost_counts_the_checkpoint():
    from transformers import AutoConfig, AutoModel

    from orchestrator.teacher_source import MINILM, resolve_teacher_source
    from workers.teacher import teacher_cost

    folder = resolve_teacher_source(MINILM)
    cost = teacher_cost(folder, seq_len=64)
    assert cost.params == AutoModel.from_pretrained(folder).num_parameters()
    c = AutoConfig.from_pretrained(folder)
    h, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    encoder = 2 * 64 * layers * (4 * h * h + 2 * h * i)  # the matmuls, biases and pooler aside
    assert encoder <= cost.flops <= 1.02 * encoder


def test_latency_cost_vector():
    table = {name: float(i + 1) for i, name in enumerate(PRIMITIVES)}
    vec = normalised_cost_vector(COSTS, source="latency", latency_table=table)
    torch.testing.assert_close(
        vec, torch.arange(1, len(PRIMITIVES) + 1, dtype=torch.float32) / len(PRIMITIVES)
    )
    with pytest.raises(ValueError, match="latency_table"):
        normalised_cost_vector(COSTS, source="latency")
    with pytest.raises(ValueError, match="zero"):
        normalised_cost_vector(
            COSTS, source="latency", latency_table={k: 1.0 for k in PRIMITIVES if k != "zero"}
        )
    with pytest.raises(ValueError, match="source"):
        normalised_cost_vector(COSTS, source="energy")


def _peaked(names: list[str], edges: int = 9) -> torch.Tensor:
    """(E, n_ops) probabilities concentrated on `names`."""
    logits = torch.zeros(edges, len(PRIMITIVES))
    for name in names:
        logits[:, PRIMITIVES.index(name)] = 5.0
    return logits.softmax(-1)


def test_efficiency_loss_prefers_cheap_ops_and_shallow_nets():
    cost = normalised_cost_vector(COSTS)
    uniform_depth = torch.full((4,), 0.25)
    conv_heavy = efficiency_loss(_peaked(["conv_5", "conv_7", "dil_conv_7"]), uniform_depth, cost)
    pool_heavy = efficiency_loss(_peaked(["max_pool_3", "avg_pool_3", "identity"]), uniform_depth, cost)
    assert conv_heavy > pool_heavy > 0
    ops = _peaked(["conv_3"])
    shallow = efficiency_loss(ops, torch.tensor([1.0, 0, 0, 0]), cost)
    deep = efficiency_loss(ops, torch.tensor([0, 0, 0, 1.0]), cost)
    assert deep.item() == pytest.approx(4 * shallow.item())
    assert deep.item() == pytest.approx((ops @ cost).mean().item())  # K = K_max: plain mean


def test_efficiency_loss_is_differentiable():
    alpha = torch.zeros(9, len(PRIMITIVES), requires_grad=True)
    depth_logits = torch.zeros(3, requires_grad=True)
    loss = efficiency_loss(alpha.softmax(-1), depth_logits.softmax(-1), normalised_cost_vector(COSTS))
    loss.backward()
    conv_7, identity = PRIMITIVES.index("conv_7"), PRIMITIVES.index("identity")
    # Descent favours cheap ops and shallow nets.
    assert (alpha.grad[:, conv_7] > 0).all() and (alpha.grad[:, identity] < 0).all()
    assert depth_logits.grad[0] < 0 < depth_logits.grad[-1]


def test_expected_params_and_flops():
    one_hot = torch.zeros(9, len(PRIMITIVES))
    one_hot[:, PRIMITIVES.index("conv_3")] = 1.0
    depth = torch.tensor([0.0, 1.0, 0.0])  # K = 2
    assert expected_params(one_hot, depth, COSTS) == pytest.approx(2 * 9 * COSTS["conv_3"].params)
    assert expected_flops(one_hot, depth, COSTS) == pytest.approx(2 * 9 * COSTS["conv_3"].flops)
    with pytest.raises(ValueError):
        expected_params(one_hot[:, :4], depth, COSTS)


def test_genotype_cost_grows_with_convs_and_depth():
    space = SearchSpaceConfig(embed_dim=D, k_max=3)
    pools = Genotype(depth=1, nodes=((("max_pool_3", 0), ("identity", 1)),) * 3)
    convs = Genotype(depth=1, nodes=((("conv_7", 0), ("conv_5", 1)),) * 3)
    deeper = Genotype(depth=3, nodes=convs.nodes)

    def cost(g: Genotype) -> tuple[int, float]:
        return genotype_params_flops(g, space=space, seq_len=T, vocab_size=50, num_labels=2)

    assert cost(pools)[0] < cost(convs)[0] < cost(deeper)[0]
    assert cost(pools)[1] < cost(convs)[1] < cost(deeper)[1]
    conv_part = 3 * (COSTS["conv_7"].params + COSTS["conv_5"].params)
    assert cost(convs)[0] - cost(pools)[0] == conv_part


def test_op_latency_table_on_cpu():
    space = SearchSpaceConfig(embed_dim=8, k_max=2)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    table = op_latency_table(space, seq_len=8, batch_size=2, device="cpu", repeats=3, warmup=1)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched
    assert list(table) == list(space.primitives)
    assert all(v > 0 for v in table.values())
    vec = normalised_cost_vector(
        op_costs(primitives=space.primitives, dim=8, seq_len=8), source="latency", latency_table=table
    )
    assert vec.max().item() == pytest.approx(1.0)
