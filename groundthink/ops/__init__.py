"""Kernels: each fast path sits beside its step-by-step reference (tests compare them)."""
from groundthink.ops.rwkv6 import rwkv6, rwkv6_chunk_torch, rwkv6_recurrent_naive
from groundthink.ops.ssd import ssd, ssd_chunk_torch, ssd_recurrent_naive

__all__ = [
    "rwkv6", "rwkv6_chunk_torch", "rwkv6_recurrent_naive",
    "ssd", "ssd_chunk_torch", "ssd_recurrent_naive",
]
