"""Kernels: each fast path sits beside its step-by-step reference (tests compare them)."""
from groundthink.ops.rwkv6 import rwkv6, rwkv6_chunk_torch, rwkv6_recurrent_naive, rwkv6_step
from groundthink.ops.ssd import ssd, ssd_chunk_torch, ssd_recurrent_naive, ssd_step

__all__ = [
    "rwkv6", "rwkv6_chunk_torch", "rwkv6_recurrent_naive", "rwkv6_step",
    "ssd", "ssd_chunk_torch", "ssd_recurrent_naive", "ssd_step",
]
