"""Our RWKV6 / Mamba2 are drop-in twins of FLA's layers: same parameters, and the same function.

FLA's layers cannot run on CPU only because a few of their pieces are Triton kernels. For the functional
parity test those pieces are swapped for FLA's own pure-PyTorch references (token shift, the RWKV-6
recurrence, GroupNorm, gated RMSNorm) or PyTorch's SiLU (FLA's ``swish`` is a Triton kernel with the same
math); everything else is FLA's code. Needs the ``fla`` extra (Triton): skipped without it.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from extras import require_extra

require_extra("fla")
pytestmark = pytest.mark.extra("fla")

from fla.layers.mamba2 import Mamba2 as FLAMamba2  # noqa: E402
from fla.layers.rwkv6 import RWKV6Attention  # noqa: E402

from groundthink.layers import RWKV6, Mamba2  # noqa: E402

# The arguments our blocks use at the seed design's size, and one other size each.
RWKV6_CONFIGS = [
    dict(hidden_size=128, expand_k=0.5, num_heads=4),
    dict(hidden_size=64, expand_k=0.5, num_heads=2, proj_low_rank_dim=16, gate_low_rank_dim=32),
]
MAMBA2_CONFIGS = [
    dict(hidden_size=128, head_dim=64, expand=2, state_size=128),
    dict(hidden_size=48, head_dim=16, expand=2, state_size=32, conv_kernel=3),
]


def build_fla_rwkv6(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "According to Bo, ..."
        return RWKV6Attention(**kwargs)


def signature(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def randomize_(module, seed=0, std=0.2):
    """Non-trivial weights (FLA zero-initializes several parameters, which would hide mismatches)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            centre = 1.0 if "norm.weight" in name else 0.0  # norm gains near 1, as trained ones are
            p.copy_(torch.randn(p.shape, generator=g) * std + centre)


def rel_err(actual, expected):
    return (torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected)).item()


# ---------------------------------------------------------------------------------------------------------
# Parameter names / shapes, and strict state_dict loading both ways

@pytest.mark.parametrize("kwargs", RWKV6_CONFIGS)
def test_rwkv6_parameters_match_fla(kwargs):
    theirs, ours = build_fla_rwkv6(**kwargs), RWKV6(**kwargs)
    assert signature(ours) == signature(theirs)
    randomize_(theirs, seed=1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())
    randomize_(ours, seed=2)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert all(torch.equal(theirs.state_dict()[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("kwargs", MAMBA2_CONFIGS)
def test_mamba2_parameters_match_fla(kwargs):
    theirs, ours = FLAMamba2(**kwargs), Mamba2(**kwargs)
    assert signature(ours) == signature(theirs)
    randomize_(theirs, seed=1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())
    randomize_(ours, seed=2)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert all(torch.equal(theirs.state_dict()[k], v) for k, v in ours.state_dict().items())


def test_mamba2_initialization_matches_fla():
    # Same init recipe: with the same seed, the same initial weights (dt_bias, A_log, D, norm included).
    kwargs = MAMBA2_CONFIGS[1]
    torch.manual_seed(0)
    theirs = FLAMamba2(**kwargs)
    torch.manual_seed(0)
    ours = Mamba2(**kwargs)
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name


# ---------------------------------------------------------------------------------------------------------
# Functional parity on CPU: FLA's layer (Triton pieces replaced by FLA's references) == ours

@pytest.fixture
def fla_rwkv6_on_cpu(monkeypatch):
    """Build FLA's RWKV6Attention with its Triton calls routed to FLA's pure-PyTorch references."""
    import fla.layers.rwkv6 as fla_rwkv6
    from fla.modules.norm.layernorm import group_norm_ref
    from fla.modules.token_shift import token_shift_ref
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    def reference_rwkv6(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens=None, **_):
        assert cu_seqlens is None
        # The layer uses [B, T, H, K]; the reference is head-first [B, H, T, K].
        o, state = naive_recurrent_rwkv6(r.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         w.transpose(1, 2), u, scale=scale, initial_state=initial_state,
                                         output_final_state=output_final_state)
        return o.transpose(1, 2), state

    monkeypatch.setattr(fla_rwkv6, "token_shift", lambda x, cu_seqlens=None: token_shift_ref(x, cu_seqlens))
    monkeypatch.setattr(fla_rwkv6, "chunk_rwkv6", reference_rwkv6)
    monkeypatch.setattr(fla_rwkv6, "fused_recurrent_rwkv6", reference_rwkv6)

    def build(**kwargs):
        layer = build_fla_rwkv6(**kwargs)
        norm = layer.g_norm
        norm.forward = lambda x, *_, **__: group_norm_ref(x, norm.weight, norm.bias, norm.num_groups, eps=norm.eps)
        layer.gate_fn = F.silu
        return layer

    return build


def build_fla_mamba2_on_cpu(chunk_size=64, **kwargs):
    """FLA's Mamba2 already runs its torch_forward on CPU; only its gated norm and SiLU are Triton.

    ``chunk_size`` is a computation setting of FLA's torch path (no parameter depends on it); 64 instead
    of its default 256 keeps its [chunk, chunk, heads, state] intermediates small on CPU.
    """
    from fla.modules.norm.layernorm_gated import rms_norm_ref

    layer = FLAMamba2(chunk_size=chunk_size, **kwargs)
    norm = layer.norm
    norm.forward = lambda x, z=None: rms_norm_ref(x, norm.weight, norm.bias, z=z, eps=norm.eps,
                                                   group_size=norm.group_size, norm_before_gate=norm.norm_before_gate)
    layer.act = F.silu
    return layer


@pytest.mark.parametrize("kwargs", RWKV6_CONFIGS)
@pytest.mark.parametrize("T", [1, 37])
def test_rwkv6_matches_fla_layer(fla_rwkv6_on_cpu, kwargs, T):
    theirs, ours = fla_rwkv6_on_cpu(**kwargs), RWKV6(**kwargs)
    randomize_(theirs, seed=3)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, T, kwargs["hidden_size"], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, _, _ = theirs(x)
        actual, _ = ours(x)
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    assert rel_err(actual, expected) < 1e-5


def test_rwkv6_state_matches_fla_cache(fla_rwkv6_on_cpu):
    """Continuing from a carried state: ours (explicit RWKV6State) == FLA (its cache object)."""
    from fla.models.utils import Cache

    kwargs = RWKV6_CONFIGS[1]
    theirs, ours = fla_rwkv6_on_cpu(layer_idx=0, **kwargs), RWKV6(**kwargs)
    randomize_(theirs, seed=5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 30, kwargs["hidden_size"], generator=torch.Generator().manual_seed(6))
    cache = Cache()
    with torch.no_grad():
        first_fla, _, cache = theirs(x[:, :20], past_key_values=cache, use_cache=True)
        second_fla, _, cache = theirs(x[:, 20:], past_key_values=cache, use_cache=True)
        first, state = ours(x[:, :20])
        second, state = ours(x[:, 20:], state)
    assert rel_err(first, first_fla) < 1e-5 and rel_err(second, second_fla) < 1e-5
    assert rel_err(state.wkv, cache[0]["recurrent_state"]) < 1e-5
    assert torch.equal(state.shift, cache[0]["conv_state"])


@pytest.mark.parametrize("kwargs", MAMBA2_CONFIGS)
@pytest.mark.parametrize("T", [1, 37])
def test_mamba2_matches_fla_layer(kwargs, T):
    theirs, ours = build_fla_mamba2_on_cpu(**kwargs), Mamba2(**kwargs)
    randomize_(theirs, seed=3)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, T, kwargs["hidden_size"], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, _, _ = theirs(x)
        actual, state = ours(x)
        _, _, ssm_fla = theirs.torch_forward(x)
    assert expected.abs().max() > 0.1
    assert rel_err(actual, expected) < 1e-5
    assert rel_err(state.ssm, ssm_fla) < 1e-5


def test_mamba2_matches_fla_multi_chunk():
    # FLA's torch path chunks at 256 by default; a chunk of 16 exercises its inter-chunk recurrence.
    kwargs = MAMBA2_CONFIGS[1]
    theirs, ours = build_fla_mamba2_on_cpu(chunk_size=16, **kwargs), Mamba2(**kwargs)
    randomize_(theirs, seed=7)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 45, kwargs["hidden_size"], generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected, _, ssm_fla = theirs.torch_forward(x)
        actual, state = ours(x)
    assert rel_err(actual, expected) < 1e-5
    assert rel_err(state.ssm, ssm_fla) < 1e-5
