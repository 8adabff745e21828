"""Mamba-2's SSD scan: a selective state space with one scalar decay per head.

Layout: ``x: [B, T, H, P]`` (P = head dim), ``dt: [B, T, H]`` (after softplus), ``A: [H]`` (negative),
``B, C: [B, T, H, N]`` (groups already repeated to heads), state ``[B, H, P, N]`` as in FLA's Mamba2 cache.

Recurrence (the D * x skip is added by the layer)::

    S_t = exp(dt_t * A) S_{t-1} + (dt_t x_t)^T B_t        # [P, N]
    y_t = S_t C_t

This is gated linear attention with a scalar per-head gate (q = C, k = B, v = dt * x, g = dt * A),
which is why FLA's ``chunk_simple_gla`` Triton kernel computes it on CUDA.

- ``ssd_recurrent_naive``: the step-by-step loop (reference).
- ``ssd_chunk_torch``: chunked pure-PyTorch scan (CPU path; every exponent <= 0).
- ``ssd_step``: one token (decoding), on every device: a handful of small ops, no chunk machinery.
- ``ssd``: dispatch — ``mamba_ssm`` if importable, else FLA's gated-linear-attention kernels on CUDA
  (``_ssd_fla``); the chunked scan elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from groundthink.ops.backend import fla_available, fused_recurrent_max_len, mamba_ssm_chunk_scan
from groundthink.ops.fla_hopper import chunk_simple_gla_hopper, gated_chunk_backward_guarded, hopper_chunk_verified


def ssd_recurrent_naive(x, dt, A, B, C, initial_state=None):
    """Step-by-step reference. Returns ``(y, final_state)``."""
    dtype = x.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x, dt, A, B, C = (t.to(compute) for t in (x, dt, A, B, C))
    batch, T, H, P = x.shape
    N = B.shape[-1]
    state = x.new_zeros(batch, H, P, N) if initial_state is None else initial_state.to(compute)
    ys = []
    for t in range(T):
        decay = (dt[:, t] * A).exp()[..., None, None]                          # [B, H, 1, 1]
        state = state * decay + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    return torch.stack(ys, dim=1).to(dtype), state


def ssd_chunk_torch(x, dt, A, B, C, initial_state=None, chunk_size: int = 64):
    """Chunked SSD (the "minimal SSD" of the Mamba-2 paper), with an initial state."""
    dtype = x.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    batch, T, H, P = x.shape
    N = B.shape[-1]
    L = min(chunk_size, T)
    pad = (-T) % L
    # Padded steps: dt = 0 means no decay and no input, so the final state is unchanged.
    x, B, C = (F.pad(t.to(compute), (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
    dt = F.pad(dt.to(compute), (0, 0, 0, pad))
    A = A.to(compute)
    n = (T + pad) // L
    v = (x * dt[..., None]).view(batch, n, L, H, P).permute(0, 3, 1, 2, 4)        # [B, H, n, L, P]
    Bc, Cc = (t.view(batch, n, L, H, N).permute(0, 3, 1, 2, 4) for t in (B, C))   # [B, H, n, L, N]
    a = (dt * A).view(batch, n, L, H).permute(0, 3, 1, 2)                          # [B, H, n, L]
    a_cum = a.cumsum(dim=-1)

    # Intra-chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_cum_i - a_cum_j) v_j
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    seg = (a_cum[..., :, None] - a_cum[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = (Cc @ Bc.transpose(-1, -2)) * seg.exp()                               # [B, H, n, L, L]
    y = scores @ v

    # Chunk states and the recurrence across chunks.
    a_last = a_cum[..., -1:]                                                       # [B, H, n, 1]
    chunk_states = (v * (a_last - a_cum)[..., None].exp()).transpose(-1, -2) @ Bc  # [B, H, n, P, N]
    state = x.new_zeros(batch, H, P, N) if initial_state is None else initial_state.to(compute)
    starts = []
    for c in range(n):
        starts.append(state)
        state = state * a_last[:, :, c, 0, None, None].exp() + chunk_states[:, :, c]
    starts = torch.stack(starts, dim=2)                                            # [B, H, n, P, N]
    y = y + (Cc @ starts.transpose(-1, -2)) * a_cum[..., None].exp()
    y = y.permute(0, 2, 3, 1, 4).reshape(batch, n * L, H, P)[:, :T]
    return y.to(dtype), state


def ssd_step(x, dt, A, B, C, initial_state=None):
    """One token (``T == 1``) of the recurrence, same layout and result as ``ssd_recurrent_naive``."""
    dtype = x.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x, dt, B, C = (t[:, 0].to(compute) for t in (x, dt, B, C))              # [B, H, P] / [B, H] / [B, H, N]
    A = A.to(compute)
    batch, heads, P = x.shape
    state = (x.new_zeros(batch, heads, P, B.shape[-1]) if initial_state is None
             else initial_state.to(compute))
    decay = (dt * A).exp()[..., None, None]
    state = state * decay + (dt.unsqueeze(-1) * x).unsqueeze(-1) * B.unsqueeze(-2)
    y = (state @ C.unsqueeze(-1)).squeeze(-1)
    return y.unsqueeze(1).to(dtype), state


def ssd(x, dt, A, B, C, initial_state=None):
    """SSD on any device. Returns ``(y, final_state)`` with state ``[B, H, P, N]``."""
    if x.shape[1] == 1:  # decoding: the step beats any chunked kernel at one token
        return ssd_step(x, dt, A, B, C, initial_state)
    if x.is_cuda:
        kernel = mamba_ssm_chunk_scan()
        if kernel is not None:
            y, state = kernel(x, dt, A, B, C, chunk_size=256, initial_states=initial_state,
                              return_final_states=True)
            return y, state
        if fla_available():
            return _ssd_fla(x * dt[..., None].to(x.dtype), (dt * A).float(), B, C, initial_state)
    return ssd_chunk_torch(x, dt, A, B, C, initial_state)


@torch.compiler.disable  # opaque to torch.compile: its graph breaks here and resumes after the kernel
def _ssd_fla(v, g, B, C, initial_state):
    """SSD as gated linear attention in FLA (q = C, k = B, v = dt x, log decay g = dt A).

    ``chunk_simple_gla`` (the fused recurrent kernel up to ``fused_recurrent_max_len()`` tokens, none by
    default). Where FLA refuses its backward (Hopper + Triton 3.4 - 3.7.0, FLA #640) it runs with the guard
    lifted once ``ops/fla_hopper.py``'s self-check passed for this state size and precision, and on
    ``chunk_gla`` with the decay repeated over the state otherwise. ``state_v_first`` keeps Mamba's
    ``[P, N]`` state.
    """
    from fla.ops.gla import chunk_gla
    from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

    kwargs = dict(q=C, k=B, v=v, scale=1.0, initial_state=initial_state, output_final_state=True,
                  state_v_first=True)
    if v.shape[1] <= fused_recurrent_max_len():
        return fused_recurrent_simple_gla(g=g, **kwargs)
    if not gated_chunk_backward_guarded():
        return chunk_simple_gla(g=g, **kwargs)
    if hopper_chunk_verified(B.shape[-1], v.shape[-1], B.dtype, v.device):
        return chunk_simple_gla_hopper(g=g, **kwargs)
    return chunk_gla(g=g.unsqueeze(-1).expand(*B.shape).contiguous(), **kwargs)
