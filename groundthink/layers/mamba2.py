"""Mamba-2 (SSD), parameter-for-parameter compatible with ``fla.layers.mamba2.Mamba2``.

Same parameter names, shapes and initialization as FLA 0.6 (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``,
``D``, ``norm``, ``out_proj``). It runs on CPU with GroundThink's chunked SSD, on CUDA with FLA's
``chunk_simple_gla`` kernel (or ``mamba_ssm``'s when installed), whole sequences there with GroundThink's
fused kernels on both sides of the scan (``_forward_fused``), and takes / returns its state:
``Mamba2State(ssm [B, H, P, N], conv [B, conv_dim, kernel - 1])``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from groundthink.ops.mamba2_inputs import fused_mamba2_wanted, mamba2_scan_inputs, ssd_from_scan_inputs
from groundthink.ops.norms import gated_rms_norm
from groundthink.ops.precision import matmul_dtype, upcast
from groundthink.ops.shortconv import _last_inputs, causal_conv1d_silu
from groundthink.ops.skip_gated_norm import skip_gated_rms_norm
from groundthink.ops.ssd import ssd


class Mamba2State(NamedTuple):
    ssm: torch.Tensor   # [B, H, P, N] selective state
    conv: torch.Tensor  # [B, conv_dim, kernel - 1] the last inputs of the short convolution


class GatedRMSNorm(nn.Module):
    """FLA's ``RMSNormGated`` (norm after gate): only a ``weight`` parameter."""

    def __init__(self, hidden_size: int, eps: float, group_size: int):
        super().__init__()
        self.eps, self.group_size = eps, group_size
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x, gate):
        return gated_rms_norm(x, gate, self.weight, self.eps, self.group_size)


class Mamba2(nn.Module):
    """Mamba-2 mixer. Arguments and defaults mirror FLA's ``Mamba2``."""

    def __init__(self, num_heads: int | None = None, head_dim: int = 64, hidden_size: int = 2048,
                 state_size: int = 128, expand: int = 2, n_groups: int = 1, conv_kernel: int = 4,
                 use_conv_bias: bool = True, A_init_range: tuple[float, float] = (1, 16),
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple[float, float] = (0.0, float("inf")), use_bias: bool = False,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.hidden_size = hidden_size
        self.intermediate_size = int(expand * hidden_size)
        if self.intermediate_size % head_dim:
            raise ValueError(f"Mamba-2: expand * hidden_size ({self.intermediate_size}) must be divisible by "
                             f"head_dim ({head_dim})")
        inferred = self.intermediate_size // head_dim
        if num_heads and num_heads != inferred:
            raise ValueError(f"Mamba-2: num_heads * head_dim ({num_heads * head_dim}) must equal expand * "
                             f"hidden_size ({self.intermediate_size}); use num_heads={inferred}")
        self.num_heads, self.head_dim = inferred, head_dim
        if self.num_heads % n_groups:
            raise ValueError(f"Mamba-2: num_heads ({self.num_heads}) must be divisible by n_groups ({n_groups})")
        self.ssm_state_size, self.n_groups = state_size, n_groups
        self.conv_kernel_size, self.dt_limit = conv_kernel, dt_limit

        self.conv_dim = self.intermediate_size + 2 * n_groups * state_size
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=conv_kernel, groups=self.conv_dim,
                                bias=use_conv_bias, padding=conv_kernel - 1)
        self.in_proj = nn.Linear(hidden_size, self.intermediate_size + self.conv_dim + self.num_heads, bias=use_bias)

        # dt initialised log-uniformly in [dt_min, dt_max], stored as its inverse softplus (as FLA / mamba_ssm).
        dt = torch.exp(torch.rand(self.num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.num_heads).uniform_(*A_init_range)))
        self.norm = GatedRMSNorm(self.intermediate_size, norm_eps, self.intermediate_size // n_groups)
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.out_proj = nn.Linear(self.intermediate_size, hidden_size, bias=use_bias)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> Mamba2State:
        return Mamba2State(
            torch.zeros(batch_size, self.num_heads, self.head_dim, self.ssm_state_size, device=device,
                        dtype=torch.float32),
            torch.zeros(batch_size, self.conv_dim, self.conv_kernel_size - 1, device=device, dtype=dtype),
        )

    def forward(self, hidden_states: torch.Tensor, state: Mamba2State | None = None):
        """``hidden_states: [B, T, D]`` -> ``(out [B, T, D], Mamba2State)``."""
        batch, seq_len, _ = hidden_states.shape
        gate, xBC, dt = self.in_proj(hidden_states).split(
            [self.intermediate_size, self.conv_dim, self.num_heads], dim=-1)
        if state is None and seq_len > 1 and fused_mamba2_wanted(xBC):
            return self._forward_fused(gate, xBC, dt, matmul_dtype(hidden_states))

        # Causal depthwise convolution, continuing from the previous inputs when a state is given.
        xBC, new_conv = causal_conv1d_silu(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                           None if state is None else state.conv)
        x, B, C = xBC.split([self.intermediate_size, self.n_groups * self.ssm_state_size,
                             self.n_groups * self.ssm_state_size], dim=-1)

        dt = F.softplus(upcast(dt) + upcast(self.dt_bias)).clamp(*self.dt_limit)   # [B, T, H]
        A = -torch.exp(upcast(self.A_log))
        heads_per_group = self.num_heads // self.n_groups
        x = x.reshape(batch, seq_len, self.num_heads, self.head_dim)
        B, C = (t.reshape(batch, seq_len, self.n_groups, self.ssm_state_size)
                 .repeat_interleave(heads_per_group, dim=2) for t in (B, C))
        y, ssm_state = ssd(x, dt, A, B, C, initial_state=None if state is None else state.ssm)
        y = torch.addcmul(y, x, self.D[:, None].to(x.dtype))                    # the D * x skip
        y = self.norm(y.reshape(batch, seq_len, self.intermediate_size), gate)
        return self.out_proj(y.to(matmul_dtype(hidden_states))), Mamba2State(ssm_state, new_conv)

    def _forward_fused(self, gate, xBC, dt, out_dtype):
        """CUDA, whole sequences from a zero state (training): GroundThink's kernels on both sides of FLA's scan,
        the same computation with ``dt`` folded into the keys (``ops/mamba2_inputs.py``, ``ops/skip_gated_norm.py``)."""
        x, k, q, g = mamba2_scan_inputs(xBC, dt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias,
                                        self.A_log, self.dt_limit, self.num_heads, self.n_groups, self.ssm_state_size)
        y, ssm_state = ssd_from_scan_inputs(x, k, q, g)
        y = skip_gated_rms_norm(y, x, self.D, gate, self.norm.weight, self.norm.eps, self.norm.group_size)
        history = _last_inputs(xBC, self.conv_kernel_size - 1)   # the convolution's state, as the other path keeps it
        return self.out_proj(y.to(out_dtype)), Mamba2State(ssm_state, history)
