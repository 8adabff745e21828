"""Model FLOPs of a training step, for MFU: what the model needs, not what a kernel happens to execute.

Per token, forward: 2 x (in x out) for every ``nn.Linear`` (the tied head included) and depthwise
``nn.Conv1d``; causal attention 2 x 2 x d x T/2 (scores and values over the T/2 keys a query sees on
average); RWKV-6 4 x K x V per head (rank-1 state update, readout); Mamba-2's SSD 4 x P x N per head.
A training step costs 3x the forward (backward = 2x). Norms and elementwise ops are not counted.
"""
from __future__ import annotations

import torch.nn as nn

from groundthink.layers.attention import CausalSelfAttention
from groundthink.layers.mamba2 import Mamba2
from groundthink.layers.rwkv6 import RWKV6

# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), FLOP/s; matched on device names.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def forward_flops_per_token(model: nn.Module, seq_len: int) -> float:
    flops = 0.0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features
        elif isinstance(module, nn.Conv1d):
            flops += 2 * module.in_channels // module.groups * module.out_channels * module.kernel_size[0]
        elif isinstance(module, CausalSelfAttention):
            flops += 2 * seq_len * module.o_proj.in_features
        elif isinstance(module, RWKV6):
            flops += 4 * module.num_heads * module.head_k_dim * module.head_v_dim
        elif isinstance(module, Mamba2):
            flops += 4 * module.num_heads * module.head_dim * module.ssm_state_size
    return flops


def training_flops_per_step(model: nn.Module, batch_size: int, seq_len: int) -> float:
    return 3 * forward_flops_per_token(model, seq_len) * batch_size * seq_len


def peak_flops(device_name: str) -> float | None:
    """The bf16 dense peak of a known accelerator (by name), else None."""
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None
