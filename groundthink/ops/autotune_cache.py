"""FLA's autotuning results on disk: Triton's own autotune cache, made safe to read and to share.

FLA 0.6 creates its autotuners with Triton's ``cache_results`` (``FLA_CACHE_RESULTS``, on by default), and
``ops/backend.py`` keeps it on: Triton writes each benchmark's timings to
``$TRITON_CACHE_DIR/<hash>/<kernel>.autotune.json`` (default ``~/.triton/cache``) and a later process reads
the best config back instead of benchmarking again. Triton's hash covers its own version and source, the
compile target (architecture, e.g. sm_90), the kernel's source and what it calls, the environment variables
that change compilation, the tuning key (the key arguments' values and every tensor's dtype) and the list of
candidate configs — so ``quick`` and ``full`` tuning never share an entry, and an FLA or Triton upgrade
that changes a kernel or its configs misses. Two gaps are closed here, through Triton's cache-manager hook
(``triton.knobs.cache.manager_class``, Triton >= 3.4):

- Triton's reader trusts the file: a truncated or edited entry raises in the middle of a training step.
  Here an entry that does not parse into configs and timings reads as missing, so Triton benchmarks again
  and writes a new one over it (Triton's ``put`` writes a temporary file and renames it: atomic).
- GPUs of one architecture (an H100 and an H200 are both sm_90) would share entries; here the file name
  carries the GPU's name, so a cache shared by several machines keeps one choice per GPU model.

Everything else the manager stores (compiled kernels) is Triton's ``FileCacheManager`` unchanged. A
manager the user set (``TRITON_CACHE_MANAGER``) is left in place, without these two additions.
"""
from __future__ import annotations

import functools
import json
import re
from numbers import Real
from pathlib import Path

from triton.runtime.autotuner import Config
from triton.runtime.cache import FileCacheManager

AUTOTUNE_SUFFIX = ".autotune.json"


class AutotuneCacheManager(FileCacheManager):
    """Triton's file cache; autotune entries are named per GPU model and read only when well formed."""

    def get_file(self, filename):
        if not filename.endswith(AUTOTUNE_SUFFIX):
            return super().get_file(filename)
        path = super().get_file(self.per_gpu(filename))
        return path if path is not None and autotune_entry_readable(path) else None

    def put(self, data, filename, binary=True):
        if filename.endswith(AUTOTUNE_SUFFIX):
            filename = self.per_gpu(filename)
        return super().put(data, filename, binary)

    def per_gpu(self, filename: str) -> str:
        return f"{file_safe(self.gpu_name())}.{filename}"

    @staticmethod
    def gpu_name() -> str:
        """The GPU the autotuner is timing on (Triton benchmarks on the current device)."""
        import torch

        return _device_name(torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=None)
def _device_name(index: int) -> str:
    import torch

    return torch.cuda.get_device_name(index)


def file_safe(name: str) -> str:
    """``NVIDIA H200`` -> ``NVIDIA_H200``: letters, digits, ``-`` and ``_`` only, at most 64 of them."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:64] or "gpu"


def autotune_entry_readable(path) -> bool:
    """Does ``path`` hold what Triton's reader needs: ``configs_timings``, pairs of config fields and timings?

    Triton rebuilds each config with ``Config(**fields)`` and takes the one with the smallest timing; the
    timings are all numbers or all lists of numbers (``do_bench``'s quantiles), so that they compare.
    """
    try:
        pairs = json.loads(Path(path).read_text())["configs_timings"]
        if not isinstance(pairs, list) or not pairs:
            return False
        kinds = set()
        for fields, timing in pairs:
            if not isinstance(fields, dict) or not isinstance(fields.get("kwargs"), dict):
                return False
            Config(**fields)  # what Triton's reader does with them (raises TypeError on unknown fields)
            kinds.add(_timing_kind(timing))
        return len(kinds) == 1 and None not in kinds
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return False


def _timing_kind(timing) -> str | None:
    if isinstance(timing, Real) and not isinstance(timing, bool):
        return "number"
    if isinstance(timing, list) and timing and all(isinstance(t, Real) and not isinstance(t, bool) for t in timing):
        return f"list of {len(timing)}"
    return None


def install_autotune_cache() -> bool:
    """Make ``AutotuneCacheManager`` Triton's cache manager in this process; False where another one is set."""
    try:
        from triton import knobs
    except ImportError:  # Triton < 3.4: no manager hook; its reader is used as it is
        return False
    current = knobs.cache.manager_class
    if current is not None and current is not AutotuneCacheManager:
        return False
    knobs.cache.manager_class = AutotuneCacheManager
    return True
