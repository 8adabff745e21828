"""The CPU scans: chunked == step-by-step recurrence (values and gradients), and both == FLA's references.

Float64 throughout where the claim is "same function": the chunked scans must agree with the naive loops to
a relative error below 1e-6. Sequence lengths are chosen to not be multiples of the chunk sizes (and 1).
"""
import pytest
import torch

from groundthink.ops import (rwkv6, rwkv6_chunk_torch, rwkv6_recurrent_naive, rwkv6_step, ssd, ssd_chunk_torch,
                             ssd_recurrent_naive, ssd_step)

LENGTHS = [1, 17, 37, 100]
REL_TOL = 1e-6


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (L2 over the whole tensor)."""
    return (torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected).clamp_min(1e-30)).item()


def rwkv6_inputs(T, batch=2, heads=3, K=8, V=6, dtype=torch.float64, seed=0, requires_grad=False):
    """Random RWKV-6 inputs with realistic log decays: w = -exp(N(-1, 1)) in (-inf, 0)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(batch, T, heads, K, generator=g, dtype=dtype)
    k = torch.randn(batch, T, heads, K, generator=g, dtype=dtype)
    v = torch.randn(batch, T, heads, V, generator=g, dtype=dtype)
    w = -torch.exp(torch.randn(batch, T, heads, K, generator=g, dtype=dtype) - 1.0)
    u = torch.randn(heads, K, generator=g, dtype=dtype)
    h0 = torch.randn(batch, heads, K, V, generator=g, dtype=dtype)
    tensors = (r, k, v, w, u, h0)
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


def ssd_inputs(T, batch=2, heads=3, P=5, N=4, dtype=torch.float64, seed=0, requires_grad=False):
    """Random SSD inputs: dt > 0 (softplus), A < 0, as the Mamba-2 layer produces them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, heads, P, generator=g, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(batch, T, heads, generator=g, dtype=dtype))
    A = -torch.exp(torch.randn(heads, generator=g, dtype=dtype))
    B = torch.randn(batch, T, heads, N, generator=g, dtype=dtype)
    C = torch.randn(batch, T, heads, N, generator=g, dtype=dtype)
    h0 = torch.randn(batch, heads, P, N, generator=g, dtype=dtype)
    tensors = (x, dt, A, B, C, h0)
    return tuple(t.requires_grad_(requires_grad) for t in tensors)


# ---------------------------------------------------------------------------------------------------------
# Forward: chunked == naive

@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk_size", [16, 5])
def test_rwkv6_chunked_matches_naive(T, chunk_size):
    r, k, v, w, u, h0 = rwkv6_inputs(T)
    o_ref, s_ref = rwkv6_recurrent_naive(r, k, v, w, u, initial_state=h0)
    o, s = rwkv6_chunk_torch(r, k, v, w, u, initial_state=h0, chunk_size=chunk_size)
    assert o.dtype == torch.float64 and o.shape == o_ref.shape
    assert rel_err(o, o_ref) < REL_TOL
    assert rel_err(s, s_ref) < REL_TOL


def test_rwkv6_without_initial_state_equals_zero_state():
    r, k, v, w, u, _ = rwkv6_inputs(23)
    zero = torch.zeros(2, 3, 8, 6, dtype=torch.float64)
    o_none, s_none = rwkv6_chunk_torch(r, k, v, w, u)
    o_zero, s_zero = rwkv6_recurrent_naive(r, k, v, w, u, initial_state=zero)
    assert rel_err(o_none, o_zero) < REL_TOL and rel_err(s_none, s_zero) < REL_TOL


def test_rwkv6_strong_decay_stays_finite():
    # Decays down to exp(-e^4) per step: a naive "divide by the cumulative decay" trick would overflow.
    r, k, v, w, u, h0 = rwkv6_inputs(64)
    w = w * 50.0
    o_ref, s_ref = rwkv6_recurrent_naive(r, k, v, w, u, initial_state=h0)
    o, s = rwkv6_chunk_torch(r, k, v, w, u, initial_state=h0)
    assert torch.isfinite(o).all() and rel_err(o, o_ref) < REL_TOL and rel_err(s, s_ref) < REL_TOL


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("chunk_size", [64, 16])
def test_ssd_chunked_matches_naive(T, chunk_size):
    x, dt, A, B, C, h0 = ssd_inputs(T)
    y_ref, s_ref = ssd_recurrent_naive(x, dt, A, B, C, initial_state=h0)
    y, s = ssd_chunk_torch(x, dt, A, B, C, initial_state=h0, chunk_size=chunk_size)
    assert y.dtype == torch.float64 and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < REL_TOL
    assert rel_err(s, s_ref) < REL_TOL


@pytest.mark.parametrize("with_state", [True, False])
def test_single_token_steps_match_naive(with_state):
    """The one-token decoding steps (what the dispatch runs at T = 1), values and gradients.

    Without a state the step must behave as with a zero state, so the reference gets explicit zeros.
    """
    def check(step, naive, inputs):
        *args, h0 = inputs
        if not with_state:
            h0 = torch.zeros_like(h0).requires_grad_()
        ref = _grads(lambda *a: naive(*a[:-1], initial_state=a[-1]), (*args, h0))
        got = _grads(lambda *a: step(*a, initial_state=h0 if with_state else None), tuple(args))
        for a, b in zip(got, ref):
            assert rel_err(a, b) < REL_TOL

    check(rwkv6_step, rwkv6_recurrent_naive, rwkv6_inputs(1, requires_grad=True))
    check(ssd_step, ssd_recurrent_naive, ssd_inputs(1, requires_grad=True))


@pytest.mark.parametrize("T", [1, 37])
def test_cpu_dispatch_matches_naive(T):
    """``rwkv6`` / ``ssd`` (what the layers call) on CPU: the same function as the reference loops."""
    r, k, v, w, u, h0 = rwkv6_inputs(T)
    o_ref, s_ref = rwkv6_recurrent_naive(r, k, v, w, u, initial_state=h0)
    o, s = rwkv6(r, k, v, w, u, initial_state=h0)
    assert rel_err(o, o_ref) < REL_TOL and rel_err(s, s_ref) < REL_TOL
    x, dt, A, B, C, h0 = ssd_inputs(T)
    y_ref, s_ref = ssd_recurrent_naive(x, dt, A, B, C, initial_state=h0)
    y, s = ssd(x, dt, A, B, C, initial_state=h0)
    assert rel_err(y, y_ref) < REL_TOL and rel_err(s, s_ref) < REL_TOL


# ---------------------------------------------------------------------------------------------------------
# Gradients: autograd through the chunked scan == autograd through the naive loop, w.r.t. every input

def _grads(fn, inputs, seed=1):
    """Gradients of a random linear functional of (output, final state) w.r.t. all inputs."""
    out, state = fn(*inputs)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() \
        + (state * torch.randn(state.shape, generator=g, dtype=state.dtype)).sum()
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("T", [17, 37])
def test_rwkv6_chunked_gradients_match_naive(T):
    inputs = rwkv6_inputs(T, requires_grad=True)
    names = ("r", "k", "v", "w", "u", "initial_state")
    ref = _grads(lambda r, k, v, w, u, h0: rwkv6_recurrent_naive(r, k, v, w, u, initial_state=h0), inputs)
    got = _grads(lambda r, k, v, w, u, h0: rwkv6_chunk_torch(r, k, v, w, u, initial_state=h0, chunk_size=16),
                 inputs)
    for name, a, b in zip(names, got, ref):
        assert rel_err(a, b) < REL_TOL, name


@pytest.mark.parametrize("T", [17, 37])
def test_ssd_chunked_gradients_match_naive(T):
    inputs = ssd_inputs(T, requires_grad=True)
    names = ("x", "dt", "A", "B", "C", "initial_state")
    ref = _grads(lambda x, dt, A, B, C, h0: ssd_recurrent_naive(x, dt, A, B, C, initial_state=h0), inputs)
    got = _grads(lambda x, dt, A, B, C, h0: ssd_chunk_torch(x, dt, A, B, C, initial_state=h0, chunk_size=16),
                 inputs)
    for name, a, b in zip(names, got, ref):
        assert rel_err(a, b) < REL_TOL, name


def test_rwkv6_chunked_gradcheck():
    # Finite differences on a tiny case spanning 3 chunks (the last one padded).
    inputs = rwkv6_inputs(5, batch=1, heads=2, K=2, V=2, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda r, k, v, w, u, h0: rwkv6_chunk_torch(r, k, v, w, u, initial_state=h0, chunk_size=2), inputs)


def test_ssd_chunked_gradcheck():
    inputs = ssd_inputs(5, batch=1, heads=2, P=2, N=2, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, dt, A, B, C, h0: ssd_chunk_torch(x, dt, A, B, C, initial_state=h0, chunk_size=2), inputs)


# ---------------------------------------------------------------------------------------------------------
# Against FLA's own pure-PyTorch references (the ``fla`` extra: FLA's modules import Triton)

@pytest.mark.extra("fla")
@pytest.mark.parametrize("T", [1, 37])
def test_rwkv6_naive_matches_fla_reference(T):
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    r, k, v, w, u, h0 = rwkv6_inputs(T, dtype=torch.float32)
    # FLA's reference uses the head-first layout [B, H, T, K]; its layer calls the kernels with scale=1.
    head_first = lambda t: t.transpose(1, 2)  # noqa: E731
    o_fla, s_fla = naive_recurrent_rwkv6(head_first(r), head_first(k), head_first(v), head_first(w), u,
                                         scale=1.0, initial_state=h0, output_final_state=True)
    o, s = rwkv6_recurrent_naive(r, k, v, w, u, initial_state=h0)
    assert rel_err(o, head_first(o_fla)) < 1e-5
    assert rel_err(s, s_fla) < 1e-5


@pytest.mark.extra("fla")
@pytest.mark.parametrize("T", [1, 37])
def test_ssd_matches_fla_simple_gla_reference(T):
    """The CUDA dispatch computes SSD as simple GLA (q=C, k=B, v=dt*x, g=dt*A): check that identity with
    FLA's reference loop. FLA's state is [K=N, V=P]; ours is Mamba's [P, N]."""
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    x, dt, A, B, C, h0 = ssd_inputs(T, dtype=torch.float32)
    o_fla, s_fla = naive_recurrent_simple_gla(C, B, x * dt[..., None], dt * A, scale=1.0,
                                              initial_state=h0.transpose(-1, -2), output_final_state=True)
    y, s = ssd_chunk_torch(x, dt, A, B, C, initial_state=h0)
    assert rel_err(y, o_fla) < 1e-5
    assert rel_err(s, s_fla.transpose(-1, -2)) < 1e-5


@pytest.mark.extra("fla")
@pytest.mark.parametrize("T", [1, 37, 100])
def test_ssd_matches_fla_mamba2_torch_path(T):
    """FLA Mamba2's pure-PyTorch chunked SSD (``torch_forward``), isolated: its projections and norm set to
    identity and its activation to none, so the layer computes ``y = SSD(x, softplus(dt), A, B, C)`` on
    the inputs we choose. Chunk size 16 so the multi-chunk and padding paths run."""
    import torch.nn as nn
    from fla.layers.mamba2 import Mamba2 as FLAMamba2

    heads, P, N = 3, 5, 4
    layer = FLAMamba2(num_heads=heads, head_dim=P, hidden_size=heads * P, expand=1, state_size=N, chunk_size=16)
    layer.in_proj = nn.Identity()       # input = [gate, x, B, C, dt_raw]
    layer.out_proj = nn.Identity()
    layer.act = nn.Identity()           # FLA's SiLU here is a Triton kernel; the SSD does not involve it
    layer.norm.forward = lambda y, gate: y  # read the scan output before the gated norm
    with torch.no_grad():
        layer.conv1d.weight.zero_()
        layer.conv1d.weight[:, 0, -1] = 1.0  # causal conv = identity on the current token
        layer.conv1d.bias.zero_()
        layer.dt_bias.zero_()
        layer.D.zero_()

    x, dt, A, B, C, _ = ssd_inputs(T, heads=heads, P=P, N=N, dtype=torch.float32)
    # softplus is invertible: feed dt_raw so that FLA's softplus(dt_raw) == dt.
    dt_raw = dt + torch.log(-torch.expm1(-dt))
    with torch.no_grad():
        layer.A_log.copy_(torch.log(-A))
    gate = torch.zeros(2, T, heads * P)
    packed = torch.cat([gate, x.flatten(2), B[:, :, 0], C[:, :, 0], dt_raw], dim=-1)
    # One group: B and C are shared by all heads, as in FLA's layer.
    B, C = (t[:, :, :1].expand_as(t) for t in (B, C))
    with torch.no_grad():
        y_fla, _, s_fla = layer.torch_forward(packed)
    y, s = ssd_chunk_torch(x, dt, A, B, C)
    assert rel_err(y.flatten(2), y_fla) < 1e-5
    assert rel_err(s, s_fla) < 1e-5
