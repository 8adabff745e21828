"""Small records about GPU kernels kept per machine under ``cache_root()/kernels`` (``ops/backend.py``).

A record is a JSON file named by the hash of its key, and the key is written inside it too and compared on
reading: a file that does not parse, was written for another GPU or software version, or was edited, is a
miss, and the caller recomputes and writes it again. Writes are atomic (a temporary file beside it, renamed
over it), so a crash or a concurrent writer leaves the old record or a whole new one.

Two kinds live here: the Hopper self-check's verdicts (``ops/fla_hopper.py``) and the warm-start records
(``kernels_warm``): whether this machine already compiled and autotuned the kernels of a run's shape.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from pathlib import Path

import torch

from groundthink.fileio import atomic_write_text
from groundthink.ops.backend import cache_root, fla_autotune_mode, fla_available, kernel_cache_enabled

RECORD_FORMAT = 1
# The first run of a shape on a machine without records: what compiling and autotuning costs, per mode.
# quick: 125 s cold against 56 s warm for `groundthink train` on an H200 (torch 2.11, Triton 3.6, FLA 0.6);
# full: ~5 minutes for one chunked RWKV-6 shape on an H100 (benchmarks/results/2026-11-25-h100).
COLD_START_SECONDS = {"quick": 70, "full": 300}


def records_dir() -> Path:
    return cache_root() / "kernels"


def record_path(kind: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return records_dir() / f"{kind}-{digest}.json"


def read_record(kind: str, key: dict) -> dict | None:
    """The value stored for ``key``, or None: no file, an unreadable one, or one written for another key."""
    if not kernel_cache_enabled():
        return None
    try:
        record = json.loads(record_path(kind, key).read_text())
        if record["format"] == RECORD_FORMAT and record["key"] == _as_json(key) and isinstance(record["value"], dict):
            return record["value"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        pass
    return None


def write_record(kind: str, key: dict, value: dict) -> Path | None:
    """Store ``value`` for ``key`` (atomically); None when the kernel cache is off or the disk refuses."""
    if not kernel_cache_enabled():
        return None
    path = record_path(kind, key)
    text = json.dumps({"format": RECORD_FORMAT, "key": key, "value": value}, sort_keys=True, indent=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError:  # a read-only or full disk costs the next process a recomputation, nothing more
        return None
    return path


def _as_json(value):
    """``value`` as it reads back from JSON (tuples become lists), for comparing keys."""
    return json.loads(json.dumps(value, sort_keys=True))


def gpu_identity(device) -> dict | None:
    """The GPU's name and compute capability, or None where there is no CUDA device to name."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if device.index is None else device.index
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}


FLA_DISTRIBUTIONS = ("fla-core", "flash-linear-attention")


@functools.lru_cache(maxsize=None)
def software_versions() -> dict:
    """torch, Triton and FLA versions, read from the installed packages' metadata (FLA is not imported)."""
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    # FLA ships as two distributions; naming them beats importlib.metadata.packages_distributions(), which
    # reads every installed package's file list (2.5 s on the GPU machine).
    fla = [f"{dist}=={version(dist)}" for dist in FLA_DISTRIBUTIONS if version(dist) is not None]
    return {"torch": torch.__version__, "triton": version("triton"), "fla": ",".join(fla) or None}


def kernel_environment(device) -> dict | None:
    """What compiled kernels, autotuning choices and self-check verdicts depend on, besides the shape."""
    gpu = gpu_identity(device)
    if gpu is None:
        return None
    return {**gpu, **software_versions(), "fla_autotune": fla_autotune_mode()}


def kernels_warm(shape, device) -> bool:
    """Will a run of ``shape`` (any JSON value naming the run's kernels) start without compiling on ``device``?

    True off CUDA or without FLA (nothing to compile); otherwise True once ``record_kernels_warm`` wrote a
    record for this GPU, software, autotune mode and shape, and Triton's cache folder is still there. A
    record says the kernels were built once, not that Triton kept every file since: it is for telling the
    user what to expect, nothing depends on it being right.
    """
    environment = kernel_environment(device)
    if environment is None or not fla_available():
        return True
    record = read_record("warm", {"environment": environment, "shape": shape})
    return record is not None and Path(record.get("triton_cache", "")).is_dir()


def record_kernels_warm(shape, device, seconds: float) -> None:
    """Note that ``shape``'s kernels are built here; ``seconds``: what building them cost (the estimate later)."""
    environment = kernel_environment(device)
    if environment is None or not fla_available():
        return
    write_record("warm", {"environment": environment, "shape": shape},
                 {"seconds": float(seconds), "triton_cache": _triton_cache_dir()})


def cold_start_estimate_s(device) -> int:
    """Seconds the first run of a new shape is likely to spend compiling: the most a recorded one took here
    (same GPU, software and autotune mode), else ``COLD_START_SECONDS`` for the autotune mode."""
    environment = kernel_environment(device)
    recorded = []
    if environment is not None and kernel_cache_enabled():
        for path in records_dir().glob("warm-*.json"):
            try:
                record = json.loads(path.read_text())
                if record["key"]["environment"] == _as_json(environment):
                    recorded.append(float(record["value"]["seconds"]))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
                continue
    return round(max(recorded)) if recorded else COLD_START_SECONDS[fla_autotune_mode()]


def _triton_cache_dir() -> str:
    try:  # only reached with FLA (hence Triton) usable
        from triton import knobs

        folder = knobs.cache.dir
    except ImportError:  # Triton < 3.4
        from triton.runtime.cache import default_cache_dir

        folder = default_cache_dir()
    return str(Path(folder).expanduser())
