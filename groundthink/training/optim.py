"""AdamW with parameter groups ``rwkv`` / ``mamba`` / ``other`` (SPEC §3), each split by weight decay.

Weight decay applies only to matrices of linear, convolution and embedding layers. Norm weights, biases,
gains, fusion gates, RWKV's token-shift mixes and bonus, Mamba's A_log / D / dt_bias (flagged
``_no_weight_decay`` by the layer, as in FLA) and anything else 1-D are not decayed.
"""
from __future__ import annotations

import torch

GROUPS = ("rwkv", "mamba", "other")


def group_of(name: str) -> str:
    if ".rwkv6." in name:
        return "rwkv"
    if ".mamba2." in name:
        return "mamba"
    return "other"


def decays(name: str, param: torch.nn.Parameter) -> bool:
    return (name.endswith("weight") and param.ndim >= 2 and ".fusion." not in name
            and not getattr(param, "_no_weight_decay", False))


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float, mamba_lr_mult: float = 1.0) -> list[dict]:
    """Up to six groups named ``rwkv``, ``rwkv_no_decay``, ``mamba``, ... Each carries its ``lr_mult``."""
    buckets: dict[str, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = group_of(name) + ("" if decays(name, param) else "_no_decay")
        buckets.setdefault(key, []).append(param)
    groups = []
    for base in GROUPS:
        mult = mamba_lr_mult if base == "mamba" else 1.0
        for key, wd in ((base, weight_decay), (base + "_no_decay", 0.0)):
            if key in buckets:
                groups.append({"params": buckets[key], "name": key, "lr": lr * mult, "lr_mult": mult,
                               "weight_decay": wd})
    return groups


def build_optimizer(model: torch.nn.Module, train_config) -> torch.optim.AdamW:
    groups = parameter_groups(model, train_config.lr, train_config.weight_decay, train_config.mamba_lr_mult)
    # The fused kernel is a CUDA-only speedup; the foreach default is right on CPU.
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=train_config.lr, betas=(train_config.beta1, train_config.beta2),
                             weight_decay=train_config.weight_decay, fused=fused or None)
