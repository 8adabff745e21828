"""The precision rule, written once: bf16 autocast on CUDA (or when asked for), fp32 otherwise."""
from __future__ import annotations

import contextlib

import torch


def amp_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of a run (``train.precision``: auto | fp32 | bf16), None for plain fp32."""
    if precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return None


def autocast_for(device: torch.device, precision: str):
    """A context factory for forward passes outside the training step (evaluation, measurements)."""
    dtype = amp_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=torch.device(device).type, dtype=dtype)
