"""RWKV-6 ("Finch") linear attention with data-dependent per-channel decay.

Layout follows FLA: ``r, k, w: [B, T, H, K]``, ``v: [B, T, H, V]``, ``u: [H, K]``, state ``[B, H, K, V]``.
``w`` is the *log* decay (``<= 0``); FLA's layer passes ``w = -exp(w_raw)``.

Recurrence (one step, ``scale = 1`` as in FLA's RWKV6Attention)::

    o_t = r_t @ (S_{t-1} + diag(u) k_t^T v_t)
    S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t

Three implementations of the same function:
- ``rwkv6_recurrent_naive``: the step-by-step loop above (the reference; slow).
- ``rwkv6_chunk_torch``: a chunked pure-PyTorch scan (CPU path; exact, every exponent <= 0).
- ``rwkv6_step``: one token (decoding), without the chunked scan's padding to a whole chunk.
- ``rwkv6``: dispatch — FLA's Triton kernels on CUDA, the chunked scan (or the step for T = 1) elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from groundthink.ops.backend import fla_available, fused_recurrent_max_len


def rwkv6_recurrent_naive(r, k, v, w, u, initial_state=None):
    """Step-by-step reference. Returns ``(o, final_state)``; computes in float32 (float64 kept)."""
    dtype = r.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    r, k, v, w, u = (t.to(compute) for t in (r, k, v, w, u))
    B, T, H, K = r.shape
    V = v.shape[-1]
    state = r.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(compute)
    outs = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]                       # [B, H, K, V]
        outs.append(torch.einsum("bhk,bhkv->bhv", r[:, t], state + u[None, :, :, None] * kv))
        state = state * w[:, t, :, :, None].exp() + kv
    return torch.stack(outs, dim=1).to(dtype), state


def rwkv6_chunk_torch(r, k, v, w, u, initial_state=None, chunk_size: int = 16):
    """Chunked scan: exact intra-chunk pairwise decays, a short loop over chunk states.

    Within a chunk, the decay between key j and query i is ``exp(sum_{j<s<i} w_s)``; it is formed
    explicitly per channel (``[.., C, C, K]``), so no exponent is ever positive and no rescaling
    trick is needed. Cost is O(T * C * K) per head, fine for the small models this path serves.
    """
    dtype = r.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    B, T, H, K = r.shape
    V = v.shape[-1]
    C = chunk_size
    pad = (-T) % C
    # Padded steps have k = 0 (add nothing) and w = 0 (no decay): the final state is unchanged.
    r, k, v, w = (F.pad(t.to(compute), (0, 0, 0, 0, 0, pad)) for t in (r, k, v, w))
    u = u.to(compute)
    N = (T + pad) // C
    # [B, T, H, X] -> [B, H, N, C, X]
    r, k, v, w = (t.view(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for t in (r, k, v, w))

    w_incl = w.cumsum(dim=-2)              # sum_{s<=i} w_s within the chunk
    w_excl = w_incl - w                    # sum_{s<i}  w_s
    # Intra-chunk scores for j < i: sum_k r_ik k_jk exp(w_excl_i - w_incl_j).
    strict = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
    log_decay = (w_excl.unsqueeze(-2) - w_incl.unsqueeze(-3)).masked_fill(~strict[..., None], float("-inf"))
    scores = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", r, k, log_decay.exp())
    diag = torch.einsum("bhnik,hk,bhnik->bhni", r, u, k)          # the bonus u on the current token
    scores = scores + torch.diag_embed(diag)
    o = scores @ v                                                  # [B, H, N, C, V]

    # Each chunk's own contribution to the state at its end, then the recurrence over chunks.
    w_last = w_incl[..., -1:, :]                                    # [B, H, N, 1, K]
    chunk_kv = (k * (w_last - w_incl).exp()).transpose(-1, -2) @ v  # [B, H, N, K, V]
    state = r.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(compute)
    starts = []
    for n in range(N):
        starts.append(state)
        state = state * w_last[:, :, n, 0, :, None].exp() + chunk_kv[:, :, n]
    starts = torch.stack(starts, dim=2)                             # [B, H, N, K, V]
    o = o + (r * w_excl.exp()) @ starts
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(dtype), state


def rwkv6_step(r, k, v, w, u, initial_state=None):
    """One token (``T == 1``) of the recurrence, same layout and result as ``rwkv6_recurrent_naive``."""
    dtype = r.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    r, k, v, w = (t[:, 0].to(compute) for t in (r, k, v, w))                # [B, H, K] / [B, H, V]
    batch, heads, K = r.shape
    state = (r.new_zeros(batch, heads, K, v.shape[-1]) if initial_state is None
             else initial_state.to(compute))
    # r (S + diag(u) k^T v) = r S + (r . u k) v: no [K, V] outer product needed for the output.
    out = (r.unsqueeze(-2) @ state).squeeze(-2) + (r * u.to(compute) * k).sum(-1, keepdim=True) * v
    state = state * w.exp().unsqueeze(-1) + k.unsqueeze(-1) * v.unsqueeze(-2)
    return out.unsqueeze(1).to(dtype), state


def rwkv6(r, k, v, w, u, initial_state=None, output_final_state: bool = True):
    """RWKV-6 attention on any device: FLA's Triton kernels on CUDA, the chunked scan elsewhere.

    One token (decoding) always takes ``rwkv6_step``, on CUDA too: a few plain ops that ``torch.compile``
    fuses with their neighbours, where FLA's kernel would be an opaque call that splits the compiled graph.
    """
    if r.shape[1] == 1:  # decoding: one step instead of a chunk padded 16-fold (or a graph break)
        return rwkv6_step(r, k, v, w, u, initial_state)
    if r.is_cuda and fla_available():
        return _rwkv6_fla(r, k, v, w, u, initial_state, output_final_state)
    o, state = rwkv6_chunk_torch(r, k, v, w, u, initial_state)
    return o, state


@torch.compiler.disable  # opaque to torch.compile: its graph breaks here and resumes after the kernel
def _rwkv6_fla(r, k, v, w, u, initial_state, output_final_state):
    from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

    kernel = fused_recurrent_rwkv6 if r.shape[1] <= fused_recurrent_max_len() else chunk_rwkv6
    o, final_state = kernel(r=r, k=k, v=v, w=w, u=u, scale=1.0, initial_state=initial_state,
                            output_final_state=output_final_state)
    if kernel is fused_recurrent_rwkv6 and final_state is not None and final_state.requires_grad:
        # Measured on an H100 (benchmarks/results/2026-11-25-h100/gpu_parity.json, ops rwkv6_T37): FLA 0.6's
        # fused recurrent backward gets dk, dv, dw wrong (12-16%) when the loss depends on the final state.
        # Training never backpropagates through it (states are carried detached), so fail loudly if it does.
        final_state.register_hook(_refuse_final_state_grad)
    return o, final_state


def _refuse_final_state_grad(grad):
    if grad is None:  # autograd calls the hook with None when nothing downstream used the state
        return None
    raise RuntimeError("backpropagating through the final RWKV-6 state of a short (fused recurrent) CUDA call is "
                       "not supported (FLA 0.6's fused recurrent kernel returns wrong key/value/decay gradients); "
                       "detach the carried state, or pass more tokens per call than "
                       "GROUNDTHINK_FUSED_RECURRENT_MAX_LEN so the chunked kernel is used")
