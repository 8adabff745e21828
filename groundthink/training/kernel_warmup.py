"""What a run does about GPU kernels before its first step: the Hopper self-checks of the Mamba-2 scan,
started in the background while the data loads, and the name of the run's kernels for the kernel-cache
record that tells later runs whether they start warm (groundthink/ops/kernel_cache.py)."""
from __future__ import annotations

import torch

from groundthink.ops.fla_hopper import start_hopper_checks
from groundthink.training.config import Config
from groundthink.training.precision import amp_dtype


def start_kernel_checks(config: Config, device: torch.device) -> None:
    """The self-checks this model's scans need (a no-op off CUDA, off Hopper, or when the verdict is cached)."""
    if device.type != "cuda":
        return
    model = config.model_config()  # the scan sizes do not depend on the vocabulary
    if {"P", "M"} & set(model.layer_kinds()):
        dtype = amp_dtype(device, config.train.precision) or torch.float32
        start_hopper_checks([(model.mamba_state_size, model.mamba_head_dim, dtype)], device)


def kernel_shape(config: Config, captured: bool) -> dict:
    """What names a run's GPU kernels: the resolved model and the step's shape and form."""
    tc = config.train
    return {"model": config.model.to_dict(), "batch": tc.batch_size, "seq_len": tc.seq_len,
            "grad_accum": tc.grad_accum, "precision": tc.precision, "graph": captured, "compile": tc.compile}
