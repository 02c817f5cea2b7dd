"""search_space: ops (masked, every primitive), Gumbel sampling, the config."""

import pytest
import torch
import torch.nn.functional as F

from search_space import OPS, PRIMITIVES, SearchSpaceConfig, TemperatureSchedule, gumbel_softmax
from search_space.config import POOLS
from search_space.layers import masked_pool
from search_space.ops import OP_SPECS, build_op, conv_families, conv_tokens

B, T, D = 3, 9, 16
LENGTHS = (9, 5, 2)  # one full row, two padded rows


def _mask(dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(B, T, dtype=dtype)  # (B, T)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    return mask


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32, torch.long])
def test_op_keeps_shape_and_ignores_padding(name, mask_dtype):
    torch.manual_seed(0)
    op = OPS[name](D)
    mask = _mask(mask_dtype)
    real = mask.bool().unsqueeze(-1)  # (B, T, 1)
    x = torch.randn(B, T, D)
    # Large values at the pads: any leak into real positions would show.
    x_other = torch.where(real, x, 100.0 * torch.randn(B, T, D))

    out, out_other = op(x, mask), op(x_other, mask)

    assert out.shape == (B, T, D)
    assert torch.isfinite(out).all()
    assert torch.equal(out.masked_select(~real), torch.zeros_like(out.masked_select(~real)))
    torch.testing.assert_close(out.masked_select(real), out_other.masked_select(real))


def test_identity_and_zero():
    x, mask = torch.randn(B, T, D), _mask(torch.bool)
    torch.testing.assert_close(build_op("identity", D, norm=False)(x, mask), x * mask.unsqueeze(-1))
    torch.testing.assert_close(OPS["identity"](D)(x, mask), F.layer_norm(x, (D,)) * mask.unsqueeze(-1))
    assert not OPS["zero"](D)(x, mask).any()


@pytest.mark.parametrize("name", [p for p in PRIMITIVES if p != "zero"])
def test_ops_are_on_one_scale(name):
    """With norm, every real token of every op's output has mean 0 and variance 1 over channels."""
    torch.manual_seed(0)
    mask = _mask(torch.bool)
    out = OPS[name](D)(3.0 * torch.randn(B, T, D) + 2.0, mask)[mask]  # (real tokens, D)
    torch.testing.assert_close(out.mean(-1), torch.zeros(len(out)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(len(out)), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", [p for p in PRIMITIVES if "conv" in p])
def test_a_super_kernel_slice_equals_the_standalone_op(name):
    torch.manual_seed(0)
    spec = OP_SPECS[name]
    family = conv_families(PRIMITIVES)[spec.dilation]
    width = max(OP_SPECS[n].kernel_size for n in family)
    kernel = torch.nn.Conv1d(D, D, width, dilation=spec.dilation)
    shared = build_op(name, D, kernel=kernel)
    own = build_op(name, D)
    start = (width - spec.kernel_size) // 2
    with torch.no_grad():
        own.conv.weight.copy_(kernel.weight[:, :, start:start + spec.kernel_size])
        own.conv.bias.copy_(kernel.bias)
    x, mask = torch.randn(B, T, D), _mask(torch.bool)
    torch.testing.assert_close(shared(x, mask), own(x, mask))
    assert list(shared.parameters()) == []  # the edge owns the super-kernel, not the op
    shared(x, mask).sum().backward()
    assert kernel.weight.grad[:, :, start:start + spec.kernel_size].abs().sum() > 0


@pytest.mark.parametrize("name", [p for p in PRIMITIVES if "conv" in p])
def test_the_matmul_conv_equals_torch_conv1d_in_value_and_gradient(name):
    spec = OP_SPECS[name]
    torch.manual_seed(0)
    x = torch.randn(B, T, D, requires_grad=True)
    weight = torch.randn(D + 1, D, spec.kernel_size, requires_grad=True)  # D_out != D_in on purpose
    bias = torch.randn(D + 1, requires_grad=True)
    pad = spec.dilation * (spec.kernel_size - 1) // 2
    ours = conv_tokens(x, weight, bias, dilation=spec.dilation)
    torch_conv = F.conv1d(x.transpose(1, 2), weight, bias, padding=pad, dilation=spec.dilation).transpose(1, 2)
    torch.testing.assert_close(ours, torch_conv)
    cotangent = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * cotangent).sum(), (x, weight, bias))
    expected = torch.autograd.grad((torch_conv * cotangent).sum(), (x, weight, bias))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_pools_use_only_real_tokens():
    mask = torch.tensor([[1, 1, 1, 0]])  # (1, 4)
    x = torch.tensor([[[-1.0], [-2.0], [-3.0], [0.0]]])  # (1, 4, 1); the pad would win a max
    max_out = build_op("max_pool_3", 1, norm=False)(x, mask)
    avg_out = build_op("avg_pool_3", 1, norm=False)(x, mask)
    assert max_out[0, :, 0].tolist() == [-1.0, -1.0, -2.0, 0.0]
    # Edges and the last real token average over the real tokens in the window only.
    torch.testing.assert_close(avg_out[0, :, 0], torch.tensor([-1.5, -2.0, -2.5, 0.0]))


@pytest.mark.parametrize("how", POOLS)
def test_readout_pool_reads_only_real_tokens(how):
    x, mask = torch.randn(B, T, D), _mask(torch.bool)  # (B, T, D), (B, T)
    padded = x.masked_fill(~mask.unsqueeze(-1), 1e4)  # pads that would win a max and swamp a mean
    got = masked_pool(padded, mask, how=how)  # (B, D)
    for b, n in enumerate(LENGTHS):
        want = x[b, :n].amax(dim=0) if how == "max" else x[b, :n].mean(dim=0)
        torch.testing.assert_close(got[b], want)
    assert masked_pool(x, torch.zeros(B, T, dtype=torch.bool), how=how).eq(0).all()  # no real token: zeros


def test_readout_pool_refuses_an_unknown_way():
    with pytest.raises(ValueError, match="pool must be"):
        masked_pool(torch.randn(B, T, D), _mask(torch.bool), how="sum")


@pytest.mark.parametrize("name", [p for p in PRIMITIVES if "conv" in p])
def test_convs_without_norm_are_same_padded_and_nonnegative(name):
    op = build_op(name, D, norm=False)
    out = op(torch.randn(B, T, D), torch.ones(B, T))
    assert out.shape == (B, T, D) and (out >= 0).all()  # ReLU
    assert sum(p.numel() for p in op.parameters()) == D * D * OP_SPECS[name].kernel_size + D


def test_gumbel_hard_is_exact_one_hot_with_gradient():
    logits = torch.randn(4, 6, requires_grad=True)
    y = gumbel_softmax(logits, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y.detach().sum(-1), torch.ones(4))
    (y * torch.randn(4, 6)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_generator_reproducible_and_soft_mode():
    logits = torch.randn(5, 10)
    a = gumbel_softmax(logits, tau=1.0, hard=False, generator=torch.Generator().manual_seed(3))
    b = gumbel_softmax(logits, tau=1.0, hard=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    torch.testing.assert_close(a.sum(-1), torch.ones(5))
    assert (a > 0).all()
    with pytest.raises(ValueError, match="tau"):
        gumbel_softmax(logits, tau=0.0)


def test_temperature_schedule_decays_exponentially_and_clamps():
    schedule = TemperatureSchedule(start=1.0, end=0.1, total_steps=100)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(50) == pytest.approx(0.1**0.5)
    assert schedule(100) == pytest.approx(0.1)
    assert schedule(1000) == pytest.approx(0.1)
    assert schedule(-5) == pytest.approx(1.0)
    values = [schedule(s) for s in range(0, 101, 10)]
    assert values == sorted(values, reverse=True)
    with pytest.raises(ValueError):
        TemperatureSchedule(total_steps=0)


def test_config_defaults_and_round_trip():
    space = SearchSpaceConfig()
    assert (space.embed_dim, space.k_max, space.num_nodes, space.primitives) == (128, 8, 3, PRIMITIVES)
    custom = SearchSpaceConfig.from_dict({"embed_dim": 32, "k_max": 2, "primitives": ["conv_3", "zero"]})
    assert custom.primitives == ("conv_3", "zero")  # lists become tuples
    assert SearchSpaceConfig.from_dict(custom.to_dict()) == custom


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_max": 0}, "k_max"),
        ({"k_max": 17}, "k_max"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"num_nodes": 0}, "num_nodes"),
        ({"primitives": ("conv_3", "conv_9")}, "unknown primitives"),
        ({"primitives": ("zero",)}, "other than"),
        ({"primitives": ("conv_3", "conv_3")}, "duplicates"),
        ({"dropout": 1.0}, "dropout"),
        ({"pool": "sum"}, "pool"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchSpaceConfig(**kwargs)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="embed_dm"):
        SearchSpaceConfig.from_dict({"embed_dm": 32})
    pydantic = pytest.importorskip("pydantic")

    class Job(pydantic.BaseModel):
        space: SearchSpaceConfig = SearchSpaceConfig()

    assert Job.model_validate({"space": {"k_max": 4}}).space.k_max == 4
    with pytest.raises(pydantic.ValidationError):
        Job.model_validate({"space": {"embed_dm": 32}})
