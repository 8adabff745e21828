"""Which fast kernels this process can use. Imports are lazy: CPU-only machines never touch Triton."""
from __future__ import annotations

import functools
import importlib.util
import os


@functools.lru_cache(maxsize=None)
def fla_available() -> bool:
    """FLA's Triton ops are usable: the package imports and a CUDA device is present.

    ``GROUNDTHINK_DISABLE_FLA=1`` forces the pure-PyTorch path (for parity checks on a GPU).
    """
    if os.environ.get("GROUNDTHINK_DISABLE_FLA") == "1":
        return False
    if importlib.util.find_spec("fla") is None:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import fla.ops.rwkv6  # noqa: F401
        import fla.ops.simple_gla  # noqa: F401
    except Exception:  # a broken Triton install must not break the CPU path
        return False
    return True


@functools.lru_cache(maxsize=None)
def mamba_ssm_chunk_scan():
    """``mamba_ssm``'s fused SSD kernel when that package is installed, else None."""
    if os.environ.get("GROUNDTHINK_DISABLE_FLA") == "1" or importlib.util.find_spec("mamba_ssm") is None:
        return None
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:
        return None
    return mamba_chunk_scan_combined


def fused_ops_wanted(x) -> bool:
    """Use FLA's fused Triton kernels for the small ops around the scans (norms, short conv, token shift)?

    Yes on CUDA when FLA is usable, except while ``torch.compile`` traces the model (Inductor fuses the
    PyTorch versions into its own kernels, and an opaque Triton call would split its graph).
    ``GROUNDTHINK_FUSED_OPS=0`` keeps the PyTorch versions on CUDA (to measure what the kernels buy).
    """
    if not x.is_cuda or os.environ.get("GROUNDTHINK_FUSED_OPS") == "0" or not fla_available():
        return False
    import torch

    return not torch.compiler.is_compiling()
