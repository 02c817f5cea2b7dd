"""search_space: supernet, student, embedding projection."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from search_space import (
    PRIMITIVES,
    Genotype,
    MixedOp,
    SearchSpaceConfig,
    Student,
    Supernet,
    TemperatureSchedule,
    efficiency_loss,
    genotype_params_flops,
    normalised_cost_vector,
    op_costs,
    project_embeddings,
)
from search_space.supernet import genotype_weights, inherit_weights, uniform_path

SPACE = SearchSpaceConfig(embed_dim=16, k_max=3, dropout=0.1)
VOCAB, LABELS, PAD = 50, 2, 0
GENOTYPE = Genotype(
    depth=2,
    nodes=(
        (("conv_3", 0), ("identity", 1)),
        (("dil_conv_5", 1), ("max_pool_3", 2)),
        (("avg_pool_3", 0), ("conv_7", 3)),
    ),
)


def _batch(batch: int = 4, length: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=gen)  # (B, T)
    lengths = torch.randint(2, length + 1, (batch,), generator=gen)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    return ids.masked_fill(~mask, PAD), mask


def _supernet(seed: int = 0, *, space: SearchSpaceConfig = SPACE, **kwargs) -> Supernet:
    torch.manual_seed(seed)
    return Supernet(space, vocab_size=VOCAB, num_labels=LABELS, pad_id=PAD, **kwargs)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_forward_scores_every_depth():
    net = _supernet()
    ids, mask = _batch()
    out = net(ids, mask, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert out.logits_by_depth.shape == (SPACE.k_max, 4, LABELS) and out.depth == SPACE.k_max
    assert len(out.cell_probe_logits) == SPACE.k_max
    assert all(p.shape == (4, LABELS) for p in out.cell_probe_logits)
    assert out.op_weights.shape == out.op_probs.shape == (9, len(PRIMITIVES))
    assert torch.equal(out.op_weights.detach().sum(-1), torch.ones(9))  # hard one-hot per edge
    torch.testing.assert_close(out.depth_probs.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("depth", range(1, SPACE.k_max + 1))
def test_a_depth_runs_that_many_cells_and_its_heads_are_the_full_runs_prefixes(depth):
    net = _supernet().eval()
    ids, mask = _batch()
    path = genotype_weights(GENOTYPE, primitives=SPACE.primitives)
    short = net(ids, mask, op_weights=path, depth=depth)
    full = net(ids, mask, op_weights=path)
    assert short.depth == depth and len(short.cell_probe_logits) == depth
    torch.testing.assert_close(short.logits_by_depth, full.logits_by_depth[:depth])


@pytest.mark.parametrize("depth", [0, SPACE.k_max + 1])
def test_a_depth_outside_the_space_is_refused(depth):
    ids, mask = _batch()
    with pytest.raises(ValueError, match=f"depth must be in 1..{SPACE.k_max}"):
        _supernet()(ids, mask, tau=1.0, depth=depth)


def test_a_given_path_runs_only_its_ops_and_no_gradient_reaches_alpha():
    net = _supernet()
    ids, mask = _batch()
    path = uniform_path(9, len(PRIMITIVES), generator=torch.Generator().manual_seed(0))
    assert torch.equal(path.sum(-1), torch.ones(9))
    out = net(ids, mask, op_weights=path)
    assert torch.equal(out.op_weights, path)
    out.logits_by_depth.sum().backward()
    assert net.alpha.grad is None and net.depth_logits.grad is None
    with pytest.raises(ValueError, match="op_weights must be"):
        net(ids, mask, op_weights=path[:3])


def test_uniform_paths_draw_every_op_about_equally():
    draws = uniform_path(9000, len(PRIMITIVES), generator=torch.Generator().manual_seed(0)).sum(0)  # (n_ops,)
    assert draws.min() > 0.9 * 900 and draws.max() < 1.1 * 900


def test_forward_pairs_of_different_lengths():
    net = _supernet().eval()
    ids_a, mask_a = _batch(length=10, seed=1)
    ids_b, mask_b = _batch(length=6, seed=2)
    out = net(ids_a, mask_a, ids_b, mask_b, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert out.logits_by_depth.shape == (SPACE.k_max, 4, LABELS)
    # Padding b to a's length by hand gives the same result.
    ids_b_padded = F.pad(ids_b, (0, 4), value=PAD)
    mask_b_padded = F.pad(mask_b, (0, 4), value=False)
    again = net(
        ids_a, mask_a, ids_b_padded, mask_b_padded, tau=1.0, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out.logits_by_depth, again.logits_by_depth)
    # A pair differs from its first sentence alone.
    single = net(ids_a, mask_a, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out.logits_by_depth, single.logits_by_depth)


def test_soft_mode_runs_every_op():
    net = _supernet()
    ids, mask = _batch()
    out = net(ids, mask, tau=1.0, hard=False, generator=torch.Generator().manual_seed(0))
    assert (out.op_weights > 0).all()
    out.logits_by_depth.sum().backward()
    assert (net.alpha.grad != 0).all()


@pytest.mark.parametrize("paired", [False, True])
def test_padding_never_reaches_the_logits(paired):
    net = _supernet().eval()
    ids, mask = _batch()
    noisy = torch.where(mask, ids, torch.randint(1, VOCAB, ids.shape))  # other tokens at the pads
    pair = (ids.flip(0), mask.flip(0)) if paired else ()
    noisy_pair = (noisy.flip(0), mask.flip(0)) if paired else ()
    outs = [
        net(x, mask, *p, tau=1.0, hard=False, generator=torch.Generator().manual_seed(0))
        for x, p in ((ids, pair), (noisy, noisy_pair))
    ]
    torch.testing.assert_close(outs[0].logits_by_depth, outs[1].logits_by_depth)
    for a, b in zip(outs[0].cell_probe_logits, outs[1].cell_probe_logits, strict=True):
        torch.testing.assert_close(a, b)


def test_gradients_reach_alpha_and_the_efficiency_loss_reaches_depth():
    net = _supernet()
    ids, mask = _batch()
    labels = torch.tensor([0, 1, 1, 0])
    cost = normalised_cost_vector(op_costs(primitives=SPACE.primitives, dim=SPACE.embed_dim, seq_len=10))

    out = net(ids, mask, tau=1.0, generator=torch.Generator().manual_seed(0))
    F.cross_entropy(out.logits_by_depth[-1], labels).backward()  # the task loss alone, straight through
    assert net.alpha.grad.abs().sum() > 0

    net.zero_grad()
    out = net(ids, mask, tau=1.0, generator=torch.Generator().manual_seed(0))
    task = (out.depth_probs * torch.stack([F.cross_entropy(lg, labels) for lg in out.logits_by_depth])).sum()
    loss = task + 4.0 * efficiency_loss(out.op_probs, out.depth_probs, cost)
    loss.backward()
    assert (net.alpha.grad != 0).all(dim=-1).all()  # L_E touches every edge
    assert (net.depth_logits.grad != 0).all()
    assert all(p.grad is not None for p in net.head.parameters())


def test_mixed_op_hard_weights_run_only_the_chosen_op():
    mixed = MixedOp(8, primitives=PRIMITIVES)
    chosen = PRIMITIVES.index("conv_5")

    def refuse(*_):
        raise AssertionError("an op with zero weight ran")

    for o, op in enumerate(mixed.ops):
        if o != chosen:
            op.forward = refuse
    logits = torch.randn(len(PRIMITIVES), requires_grad=True)
    soft = logits.softmax(-1)
    weights = F.one_hot(torch.tensor(chosen), len(PRIMITIVES)) + (soft - soft.detach())  # straight-through
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5)
    out = mixed(x, mask, weights)
    torch.testing.assert_close(out, mixed.ops[chosen](x, mask))
    (out * torch.randn_like(out)).sum().backward()
    assert (logits.grad != 0).all()  # through the chosen op's weight, to every logit


def test_parameter_groups_split_the_supernet():
    net = _supernet()
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert {id(p) for p in arch} == {id(net.alpha), id(net.depth_logits)}
    assert not {id(p) for p in arch} & {id(p) for p in weights}
    assert len(arch) + len(weights) == len(list(net.parameters()))


def _search(seed: int) -> tuple[Genotype, torch.Tensor, torch.Tensor]:
    net = _supernet(seed)
    alpha_init = net.alpha.detach().clone()
    gen = torch.Generator().manual_seed(seed)
    ids, mask = _batch(seed=seed)
    labels = torch.randint(0, LABELS, (4,), generator=gen)
    cost = normalised_cost_vector(op_costs(primitives=SPACE.primitives, dim=SPACE.embed_dim, seq_len=10))
    weight_opt = torch.optim.SGD(net.weight_parameters(), lr=0.05)
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=0.3)
    schedule = TemperatureSchedule(total_steps=5)
    for step in range(5):
        out = net(ids, mask, tau=schedule(step), generator=gen)
        task = torch.stack([F.cross_entropy(lg, labels) for lg in out.logits_by_depth])  # (K,)
        loss = (out.depth_probs * task).sum() + efficiency_loss(out.op_probs, out.depth_probs, cost)
        weight_opt.zero_grad()
        arch_opt.zero_grad()
        loss.backward()
        weight_opt.step()
        arch_opt.step()
    return net.derive(), net.alpha.detach().clone(), alpha_init


def test_same_seed_same_genotype():
    genotype, alpha, alpha_init = _search(seed=7)
    genotype_again, alpha_again, _ = _search(seed=7)
    assert not torch.allclose(alpha, alpha_init)  # the search moved alpha
    assert torch.equal(alpha, alpha_again)
    assert genotype == genotype_again


@pytest.mark.parametrize(
    "genotype",
    [
        GENOTYPE,
        Genotype(depth=3, nodes=((("zero", 0), ("identity", 1)),) + GENOTYPE.nodes[1:]),
        Genotype(depth=1, nodes=((("conv_7", 0), ("dil_conv_7", 1)),) * 3),
    ],
)
@pytest.mark.parametrize("with_probes", [True, False])
@pytest.mark.parametrize(("rank", "kronecker"), [(None, None), (4, None), (None, 3)], ids=["full", "rank-4", "kron-3"])
def test_student_parameters_equal_the_analytic_count(genotype, with_probes, rank, kronecker):
    space = dataclasses.replace(SPACE, embedding_rank=rank, embedding_kronecker=kronecker)
    student = Student(genotype, space=space, vocab_size=VOCAB, num_labels=LABELS, with_probes=with_probes)
    params, flops = genotype_params_flops(
        genotype, space=space, seq_len=10, vocab_size=VOCAB, num_labels=LABELS, with_probes=with_probes
    )
    assert _count(student) == params and flops > 0


@pytest.mark.parametrize(("shared", "rank", "kronecker"), [(True, None, None), (False, None, None), (True, 4, None),
                                                         (True, None, 2)])
def test_a_student_with_inherited_weights_computes_what_its_supernet_path_computes(shared, rank, kronecker):
    net = _supernet(space=SearchSpaceConfig(embed_dim=16, k_max=3, shared_kernels=shared, embedding_rank=rank,
                                            embedding_kronecker=kronecker)).eval()
    student = Student(GENOTYPE, space=net.space, vocab_size=VOCAB, num_labels=LABELS).eval()
    inherit_weights(net, student, GENOTYPE)
    ids, mask = _batch()
    path = net(ids, mask, op_weights=genotype_weights(GENOTYPE, primitives=SPACE.primitives), depth=GENOTYPE.depth)
    out = student(ids, mask)
    torch.testing.assert_close(out.logits, path.logits_by_depth[-1])
    for a, b in zip(out.cell_probe_logits, path.cell_probe_logits, strict=True):
        torch.testing.assert_close(a, b)
    assert _count(student) < _count(net)


def test_student_forward_probes_and_padding():
    torch.manual_seed(0)
    student = Student(GENOTYPE, space=SPACE, vocab_size=VOCAB, num_labels=LABELS).eval()
    ids, mask = _batch()
    out = student(ids, mask)
    assert out.logits.shape == (4, LABELS)
    assert len(out.cell_probe_logits) == GENOTYPE.depth
    noisy = torch.where(mask, ids, torch.randint(1, VOCAB, ids.shape))
    torch.testing.assert_close(student(noisy, mask).logits, out.logits)
    pair = student(ids, mask, *_batch(length=7, seed=3))
    assert pair.logits.shape == (4, LABELS)
    bare = Student(GENOTYPE, space=SPACE, vocab_size=VOCAB, num_labels=LABELS, with_probes=False)
    assert bare(ids, mask).cell_probe_logits == []


def test_student_config_dict_rebuilds_it():
    torch.manual_seed(0)
    student = Student(GENOTYPE, space=SPACE, vocab_size=VOCAB, num_labels=LABELS, pad_id=3, with_probes=False)
    config = json.loads(json.dumps(student.config_dict()))  # JSON-serialisable
    rebuilt = Student.from_config_dict(config)
    assert rebuilt.config_dict() == student.config_dict()
    assert rebuilt.genotype == GENOTYPE and rebuilt.space == SPACE and rebuilt.pad_id == 3
    rebuilt.load_state_dict(student.state_dict())  # same architecture, same keys and shapes
    ids, mask = _batch()
    torch.testing.assert_close(rebuilt.eval()(ids, mask).logits, student.eval()(ids, mask).logits)


def test_student_rejects_a_genotype_outside_the_space():
    narrow = SearchSpaceConfig(embed_dim=16, k_max=3, primitives=("conv_3", "identity", "zero"))
    with pytest.raises(ValueError, match="outside"):
        Student(GENOTYPE, space=narrow, vocab_size=VOCAB, num_labels=LABELS)
    two_nodes = Genotype(depth=1, nodes=GENOTYPE.nodes[:2])
    with pytest.raises(ValueError, match="nodes"):
        Student(two_nodes, space=SPACE, vocab_size=VOCAB, num_labels=LABELS)


def _teacher_embeddings() -> torch.Tensor:
    # (V, H) with most variance in a few directions, like real word embeddings.
    gen = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -2, 40)  # (H,)
    basis, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen))
    return (torch.randn(VOCAB, 40, generator=gen) * scales) @ basis.T + 0.5


def test_project_embeddings_keeps_the_most_variance():
    table = _teacher_embeddings()
    projected = project_embeddings(table, SPACE.embed_dim)
    assert projected.shape == (VOCAB, SPACE.embed_dim)
    centred = table - table.mean(0)

    def residual(p: torch.Tensor) -> float:  # variance lost by the best linear map back from p
        recon = p @ torch.linalg.lstsq(p, centred).solution
        return (centred - recon).pow(2).sum().item()

    random_basis, _ = torch.linalg.qr(
        torch.randn(40, SPACE.embed_dim, generator=torch.Generator().manual_seed(1))
    )
    assert residual(projected) < 0.5 * residual(centred @ random_basis)
    assert torch.equal(project_embeddings(table, SPACE.embed_dim), projected)  # deterministic
    with pytest.raises(ValueError, match="width"):
        project_embeddings(table, 41)


def test_supernet_embedding_init_from_teacher():
    table = _teacher_embeddings()
    net = _supernet(embedding_init=table, teacher_hidden=40)
    weight = net.embedding.table.weight.detach()
    expected = project_embeddings(table, SPACE.embed_dim)
    torch.testing.assert_close(weight[PAD + 1 :], expected[PAD + 1 :])
    assert not weight[PAD].any()  # the pad row stays zero
    with pytest.raises(ValueError, match="teacher_hidden"):
        _supernet(embedding_init=table, teacher_hidden=64)
