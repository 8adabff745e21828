"""Which fast kernels this process can use. Imports are lazy: CPU-only machines never touch Triton."""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path


def cache_root() -> Path:
    """Where GroundThink keeps what it computes once per machine: ``$GROUNDTHINK_CACHE``, else
    ``~/.cache/groundthink``. Downloads and tokenizers (``data/``; ``data.cache_dir`` overrides it there) and
    the kernel records (``ops/kernel_cache.py``) live under it.
    """
    return Path(os.environ.get("GROUNDTHINK_CACHE") or Path.home() / ".cache" / "groundthink").expanduser()


def kernel_cache_enabled() -> bool:
    """Keep GPU kernel results on disk between processes? ``GROUNDTHINK_KERNEL_CACHE=0`` turns it off.

    Off, every process autotunes FLA's kernels again (Triton still reuses compiled kernels: that is its own
    cache, ``TRITON_ALWAYS_COMPILE=1`` turns it off), reruns the Hopper self-check and reports a cold start.
    """
    value = os.environ.get("GROUNDTHINK_KERNEL_CACHE", "1")
    if value not in ("0", "1"):
        raise ValueError(f"GROUNDTHINK_KERNEL_CACHE={value!r} is not 0 or 1; set 1 (keep kernel results on "
                         "disk, the default) or 0 (recompute them in every process)")
    return value == "1"


FLA_AUTOTUNE_MODES = ("quick", "full")


def fla_autotune_mode() -> str:
    """How widely FLA's kernels are autotuned: ``GROUNDTHINK_FLA_AUTOTUNE``, ``quick`` (default) or ``full``.

    ``quick`` is the default because of start-up time, its steady-state price being unmeasured. FLA's
    full search compiles and times up to 48 configs per kernel: on an H200 (torch 2.11, Triton 3.6, FLA 0.6)
    a cold ``groundthink train`` had logged no step after 200 s, where with ``quick`` (2 configs per kernel)
    the whole run took 125 s; one chunked RWKV-6 shape took ~5 minutes to tune on an H100. The price: every
    chunked-kernel row in benchmarks/results/2026-11-25-h100 ran ``quick``, and its only ``full`` rows
    (session 2; session 8's ``bench_char_modes.json``) ran the fused recurrent scans, so no same-path
    comparison exists yet. Both modes' results stay on disk (``ops/autotune_cache.py``; Triton keys them by
    the candidate configs too, so the two never mix): ``full`` costs its minutes once per GPU model, shape
    and software version, and later runs start as fast as with ``quick``.
    """
    mode = os.environ.get("GROUNDTHINK_FLA_AUTOTUNE") or "quick"
    if mode not in FLA_AUTOTUNE_MODES:
        raise ValueError(f"GROUNDTHINK_FLA_AUTOTUNE={mode!r} is unknown; set quick (2 configs per FLA kernel, "
                         "the default) or full (FLA's whole search: minutes on the first run of a shape)")
    return mode


@functools.lru_cache(maxsize=None)
def fla_available() -> bool:
    """FLA's Triton ops are usable: the package imports and a CUDA device is present.

    ``GROUNDTHINK_DISABLE_FLA=1`` forces the pure-PyTorch path (for parity checks on a GPU). The first call
    sets up FLA's autotuners (``prepare_fla_autotuners``), before any of FLA's kernels runs.
    """
    if os.environ.get("GROUNDTHINK_DISABLE_FLA") == "1":
        return False
    if importlib.util.find_spec("fla") is None:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import fla.ops.rwkv6  # noqa: F401  (fla's __init__ loads all of FLA: every autotuner exists after it)
        import fla.ops.simple_gla  # noqa: F401
    except Exception:  # a broken Triton install must not break the CPU path
        return False
    prepare_fla_autotuners(fla_autotune_mode(), autotune_results_on_disk())
    return True


def autotune_results_on_disk() -> bool:
    """Autotuning results kept on disk: ours (``GROUNDTHINK_KERNEL_CACHE``) and FLA's (``FLA_CACHE_RESULTS``) switch."""
    return kernel_cache_enabled() and os.environ.get("FLA_CACHE_RESULTS", "1") == "1"


def prepare_fla_autotuners(mode: str, on_disk: bool) -> int:
    """Set up every loaded FLA autotuner: the ``quick`` cut (``mode``) and results on disk; returns how many.

    On disk is Triton's own autotune cache (``cache_results``, which FLA 0.6 switches on at import), with
    ``ops/autotune_cache.py``'s cache manager so that an unreadable entry is rebuilt and each GPU model keeps
    its own. ``on_disk=False`` keeps results in memory only.
    """
    if on_disk:
        from groundthink.ops.autotune_cache import install_autotune_cache  # imports Triton

        install_autotune_cache()
    tuners = fla_autotuners()
    for tuner in tuners:
        if mode == "quick":
            quicken_autotuner(tuner)
        tuner.cache_results = on_disk
    return len(tuners)


def fla_autotuners() -> list:
    """Every Triton autotuner of the FLA modules loaded in this process (once each)."""
    import sys

    from triton.runtime.autotuner import Autotuner

    found: dict[int, object] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("fla.") or module is None:
            continue
        for obj in list(vars(module).values()):
            while not isinstance(obj, Autotuner) and hasattr(obj, "fn") and not isinstance(obj, type):
                obj = obj.fn  # triton.heuristics wraps the autotuner
            if isinstance(obj, Autotuner):
                found.setdefault(id(obj), obj)
    return list(found.values())


def quicken_autotuner(tuner, block_shapes: int = 2) -> int:
    """Wrap one autotuner's ``prune_configs`` so it returns at most ``block_shapes`` configs (1 if changed).

    The cut happens after FLA's own pruning (which drops configs that are wrong for the shape, or
    miscompile on Hopper), so what is left is always valid: per block shape the config with the fewest
    pipeline stages and the warps nearest 4, then the smallest and the largest block.
    """
    if getattr(tuner, "_groundthink_quick", False) or len(tuner.configs) <= 1:
        return 0
    original = tuner.prune_configs

    def prune_configs(*args, **kwargs):
        return pick_configs(original(*args, **kwargs), block_shapes)

    tuner.prune_configs = prune_configs
    tuner._groundthink_quick = True
    return 1


def pick_configs(configs: list, block_shapes: int = 2) -> list:
    """Per block shape the config with the fewest stages and warps nearest 4; then the extremes by size."""
    best: dict[tuple, object] = {}
    for config in configs:
        shape = tuple(sorted(config.kwargs.items()))
        rank = (config.num_stages or 0, abs((config.num_warps or 4) - 4), config.num_warps or 4)
        if shape not in best or rank < best[shape][0]:
            best[shape] = (rank, config)
    by_size = sorted(best.values(), key=lambda item: _block_size(item[1].kwargs))
    chosen = [by_size[0], by_size[-1]] if block_shapes >= 2 and len(by_size) > 1 else by_size[:1]
    return [config for _, config in chosen][:max(block_shapes, 1)]


def _block_size(kwargs: dict) -> int:
    size = 1
    for value in kwargs.values():
        if isinstance(value, int) and not isinstance(value, bool):
            size *= max(value, 1)
    return size


@functools.lru_cache(maxsize=None)
def fused_recurrent_max_len() -> int:
    """Up to this many tokens a CUDA scan takes FLA's fused recurrent kernel, beyond it the chunked one.

    The fused recurrent kernel is one launch each way but walks the tokens in sequence; the chunked kernels
    are several launches that use the matrix units. FLA's layers switch at 64 tokens; on an H100 the chunked
    kernels train faster already at 64 (char shape, captured step: GF-MH 1.36x, Mamba-2 1.55x, RWKV-6 1.18x;
    benchmarks/results/2026-11-25-h100/session8/bench_char_*.json), so the default is 0: every scan of more
    than one token is chunked. ``GROUNDTHINK_FUSED_RECURRENT_MAX_LEN`` moves the switch.
    """
    value = os.environ.get("GROUNDTHINK_FUSED_RECURRENT_MAX_LEN", "0")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"GROUNDTHINK_FUSED_RECURRENT_MAX_LEN={value!r} is not an integer; "
                         "set a token count such as 64 (0 = always the chunked kernels)") from None


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
    Float64 stays on PyTorch too: the kernels compute in float32, and float64 is the reference precision.
    """
    if not x.is_cuda or os.environ.get("GROUNDTHINK_FUSED_OPS") == "0" or not fla_available():
        return False
    import torch

    return x.dtype != torch.float64 and not torch.compiler.is_compiling()


def switches() -> dict:
    """The switches that change what a measurement measures (recorded beside benchmark results)."""
    return {"fla_autotune": fla_autotune_mode(), "kernel_cache": kernel_cache_enabled(),
            "fused_ops": os.environ.get("GROUNDTHINK_FUSED_OPS") != "0",
            "fused_layers": os.environ.get("GROUNDTHINK_FUSED_LAYERS") != "0",
            "fused_recurrent_max_len": fused_recurrent_max_len()}


def fused_layer_kernels_wanted(x) -> bool:
    """GroundThink's fused layer kernels (Mamba-2's input and output sides, RWKV-6's output side): where
    ``fused_ops_wanted``, unless ``GROUNDTHINK_FUSED_LAYERS=0`` (FLA's kernels and PyTorch's ops instead)."""
    return os.environ.get("GROUNDTHINK_FUSED_LAYERS") != "0" and fused_ops_wanted(x)
