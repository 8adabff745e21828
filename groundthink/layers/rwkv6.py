"""RWKV-6 time mixing, parameter-for-parameter compatible with ``fla.layers.rwkv6.RWKV6Attention``.

Same submodule names, shapes and initialization as FLA 0.6, so an FLA layer's ``state_dict`` loads here
(strict) and back. Unlike FLA's layer it runs on CPU (GroundThink's chunked scan) and takes / returns its
recurrent state explicitly: ``RWKV6State(wkv [B, H, K, V], shift [B, D])``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn

from groundthink.ops.ddlerp import ddlerp
from groundthink.ops.gated_group_norm import gated_group_norm
from groundthink.ops.precision import to_matmul_dtype, upcast
from groundthink.ops.rwkv6 import rwkv6
from groundthink.ops.shortconv import token_shift_delta


class RWKV6State(NamedTuple):
    wkv: torch.Tensor    # [B, H, K, V] matrix-valued memory
    shift: torch.Tensor  # [B, D] last input token (token shift)


def _fla_linear_init(module: nn.Module) -> None:
    # FLA's RWKV6Attention._initialize_weights, applied to every nn.Linear (LoRA included).
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight, gain=2 ** -2.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class LoRA(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, low_rank_dim: int, bias: bool = True):
        super().__init__()
        self.lora = nn.Sequential(
            nn.Linear(input_dim, low_rank_dim, bias=False),
            nn.Tanh(),
            nn.Linear(low_rank_dim, output_dim, bias=bias),
        )

    def forward(self, x):
        return self.lora(x)


class LerpLinear(nn.Module):
    """Linear(x + delta * mu): token-shift interpolation with a learned static mix ``mu``."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim, bias=False)
        self.mu = nn.Parameter(torch.zeros(input_dim))

    def forward(self, x, delta):
        return self.linear(torch.addcmul(x, delta, self.mu.to(x.dtype)))


class DDLerpLinear(nn.Module):
    """Linear(x + delta * mu_t): the mix ``mu_t`` is data-dependent (computed by ``x_proj``)."""

    def __init__(self, input_dim: int, output_dim: int, low_rank_dim: int | None = None):
        super().__init__()
        self.linear = (nn.Linear(input_dim, output_dim, bias=False) if low_rank_dim is None
                       else LoRA(input_dim, output_dim, low_rank_dim))

    def forward(self, x, mu, delta):
        return self.linear(torch.addcmul(x, delta, mu))


class RWKV6(nn.Module):
    """RWKV-6 attention (time mixing). Arguments and defaults mirror FLA's ``RWKV6Attention``."""

    def __init__(self, hidden_size: int = 1024, expand_k: float = 0.5, expand_v: float = 1.0,
                 num_heads: int = 4, proj_low_rank_dim: int = 32, gate_low_rank_dim: int = 64,
                 norm_eps: float = 1e-5):
        super().__init__()
        key_dim, value_dim = hidden_size * expand_k, hidden_size * expand_v
        if not (math.isclose(key_dim, round(key_dim)) and math.isclose(value_dim, round(value_dim))):
            raise ValueError(f"hidden_size * expand_k / expand_v must be integers, got {key_dim} / {value_dim}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.key_dim, self.value_dim = round(key_dim), round(value_dim)
        if self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(f"RWKV-6 num_heads={num_heads} must divide key dim {self.key_dim} (hidden_size "
                             f"{hidden_size} x expand_k {expand_k}) and value dim {self.value_dim}; pick heads "
                             f"dividing {self.key_dim} or a hidden_size they divide")
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.proj_low_rank_dim = proj_low_rank_dim
        self.norm_eps = norm_eps

        self.x_proj = nn.Sequential(
            LerpLinear(hidden_size, proj_low_rank_dim * 5),
            nn.Tanh(),
            nn.Linear(proj_low_rank_dim * 5, hidden_size, bias=False),
        )
        self.x_bias = nn.Parameter(torch.zeros(5, hidden_size))
        self.r_proj = DDLerpLinear(hidden_size, self.key_dim)
        self.w_proj = DDLerpLinear(hidden_size, self.key_dim, low_rank_dim=gate_low_rank_dim)
        self.k_proj = DDLerpLinear(hidden_size, self.key_dim)
        self.v_proj = DDLerpLinear(hidden_size, self.value_dim)
        self.g_proj = DDLerpLinear(hidden_size, self.value_dim)
        self.bonus = nn.Parameter(torch.zeros(num_heads, self.head_k_dim))
        # FLA's GroupNorm (one LayerNorm per head, with bias); same parameter names.
        self.g_norm = nn.Module()
        self.g_norm.weight = nn.Parameter(torch.ones(self.value_dim))
        self.g_norm.bias = nn.Parameter(torch.zeros(self.value_dim))
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.apply(_fla_linear_init)

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> RWKV6State:
        wkv_shape = (batch_size, self.num_heads, self.head_k_dim, self.head_v_dim)
        return RWKV6State(torch.zeros(wkv_shape, device=device, dtype=torch.float32),  # the memory stays float32
                          torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype))

    def forward(self, hidden_states: torch.Tensor, state: RWKV6State | None = None):
        """``hidden_states: [B, T, D]`` -> ``(out [B, T, D], RWKV6State)``."""
        batch, seq_len, hidden = hidden_states.shape
        # Every token-shift mix only feeds a projection: mix in the matmul precision (ops/precision.py).
        x = to_matmul_dtype(hidden_states)
        delta = token_shift_delta(x, None if state is None else state.shift)

        mix = self.x_proj[0](x, delta).view(batch, seq_len, 5, self.proj_low_rank_dim)
        mix = torch.einsum("btnr,hnr->btnh", self.x_proj[1](mix),
                           self.x_proj[2].weight.view(hidden, 5, self.proj_low_rank_dim))
        # mu_t = mix + x_bias for r, w, k, v, g; the five data-dependent mixes x + delta * mu_t in one op
        # (one Triton kernel each way on CUDA).
        x_r, x_w, x_k, x_v, x_g = ddlerp(x, delta, mix, self.x_bias)
        receptance = self.r_proj.linear(x_r)
        log_decay = self.w_proj.linear(x_w)
        key = self.k_proj.linear(x_k)
        value = self.v_proj.linear(x_v)
        gate = self.g_proj.linear(x_g)

        heads = (batch, seq_len, self.num_heads, -1)
        out, wkv = rwkv6(
            receptance.view(heads), key.view(heads), value.view(heads),
            -torch.exp(upcast(log_decay)).view(heads), self.bonus,
            initial_state=None if state is None else state.wkv,
        )
        # FLA's GroupNorm and the SiLU output gate (one Triton kernel each way on CUDA).
        out = gated_group_norm(out.reshape(batch, seq_len, self.value_dim), gate, self.g_norm.weight,
                               self.g_norm.bias, self.num_heads, self.norm_eps)
        return self.o_proj(out), RWKV6State(wkv, hidden_states[:, -1])
