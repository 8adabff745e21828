"""Launch sizes shared by GroundThink's Triton kernels (Triton is imported by the kernel files, not here)."""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def reduction_programs(device: torch.device, blocks: int, per_multiprocessor: int = 4) -> int:
    """How many programs a backward kernel that writes one partial sum each should launch over ``blocks``
    blocks of rows: enough to fill the GPU, few enough that summing the partials afterwards costs little.
    Off CUDA (Triton's interpreter) two."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        available = per_multiprocessor * _multiprocessors(index)
    else:
        available = 2
    return max(1, min(blocks, available))

