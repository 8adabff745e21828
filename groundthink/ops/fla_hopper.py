"""FLA's chunked gated-linear-attention backward on Hopper GPUs with Triton 3.4 - 3.7.0 (FLA #640).

FLA 0.6 raises in ``chunk_bwd_dqkwg`` (the backward of ``chunk_simple_gla``) on every Hopper GPU with these
Triton versions (torch 2.8 - 2.12.0 ship them), because the compiler miscompiles that kernel in some block
configurations (FLA #640's bisection found a 64-wide key block tiling wider keys; FLA 0.6 tiles keys up to
128 wide on Hopper). The guard is broader than the bug, and the alternative (``chunk_gla`` with the decay
repeated over the state) is much slower, so:

- ``hopper_chunk_verified`` runs the guard-lifted kernel against ``chunk_gla`` once per (state size, head
  dim, precision, GPU model, software versions) — outputs and every gradient on random inputs of two
  chunks — and says whether they agree. The check runs in a child process
  (``ops/hopper_check_child.py``): at some sizes the miscompiled kernel does not just compute wrong values
  but faults (illegal memory access, measured on an H100 at state size 16, head dim 32), which would leave
  this process's CUDA context unusable. Its verdict is stored on disk (``ops/kernel_cache.py``): a child
  costs seconds (it imports torch and FLA and builds both kernels), once per machine, not per run;
- ``start_hopper_checks`` starts those children in the background, so that they run while the trainer
  loads data and builds the model;
- ``chunk_simple_gla_hopper`` is FLA's ``chunk_simple_gla`` whose backward runs with the guard lifted. Only
  ``ops/ssd.py`` calls it, and only where the check passed.
"""
from __future__ import annotations

import contextlib
import functools
import math
import warnings

import torch

from groundthink.ops.backend import fla_available, mamba_ssm_chunk_scan
from groundthink.ops.child_check import ChildCheck
from groundthink.ops.kernel_cache import kernel_environment, read_record, record_path, write_record


@functools.lru_cache(maxsize=None)
def gated_chunk_backward_guarded() -> bool:
    """Does this FLA refuse gated ``chunk_bwd_dqkwg`` here (Hopper GPU, Triton 3.4 - 3.7.0)?"""
    from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1

    return bool(IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1)


@contextlib.contextmanager
def _hopper_guard_lifted():
    """Let FLA's gated ``chunk_bwd_dqkwg`` run on Hopper + Triton < 3.7.1 (its #640 guard raises there)."""
    import fla.ops.common.chunk_o as chunk_o

    saved = chunk_o.TRITON_ABOVE_3_7_1
    chunk_o.TRITON_ABOVE_3_7_1 = True
    try:
        yield
    finally:
        chunk_o.TRITON_ABOVE_3_7_1 = saved


@functools.lru_cache(maxsize=None)
def _hopper_chunk_function():
    from fla.ops.simple_gla.chunk import ChunkSimpleGLAFunction

    class ChunkSimpleGLAHopper(ChunkSimpleGLAFunction):
        """FLA's ``chunk_simple_gla`` whose backward runs with the #640 guard lifted."""

        @staticmethod
        def backward(ctx, do, dht):
            with _hopper_guard_lifted():
                return ChunkSimpleGLAFunction.backward(ctx, do, dht)

    return ChunkSimpleGLAHopper


def chunk_simple_gla_hopper(q, k, v, g, scale, initial_state, output_final_state, state_v_first):
    """``chunk_simple_gla`` without FLA's Hopper guard; only call it where ``hopper_chunk_verified`` says so."""
    return _hopper_chunk_function().apply(q, k, v, g, None, scale, initial_state, output_final_state,
                                          state_v_first, None, None, None)


# Largest relative L2 gradient error the self-check accepts. #640's miscompile is off by O(1) (dk ratio
# ~0.5); the two kernels' honest disagreement in bf16 is ~1e-2 at most.
HOPPER_CHECK_TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 4e-2, torch.float16: 2e-2}
# Part of each stored verdict's key: a change to what the check measures (its inputs, its tensors) makes
# every stored verdict stale.
HOPPER_CHECK_VERSION = 1
HOPPER_CHECK_TIMEOUT = 600  # seconds; the child compiles (and autotunes) both kernels once per machine

# Errors per (state size, head dim, dtype, device) in this process; the children still running.
HOPPER_CHECKS: dict[tuple, dict[str, float]] = {}
PENDING_CHECKS: dict[tuple, ChildCheck] = {}


def hopper_chunk_verified(state_size: int, head_dim: int, dtype: torch.dtype, device) -> bool:
    """Does the guard-lifted ``chunk_simple_gla`` match ``chunk_gla`` here (outputs and every gradient)?

    Checked once per (state size, head dim, precision, GPU model and software versions), in a child process,
    and the verdict stored on disk (``ops/kernel_cache.py``), so later processes only read it. A check that
    ``start_hopper_checks`` started is waited for. Inside a CUDA graph capture no check is started (an
    unchecked configuration counts as not verified there).
    """
    key = _check_key(state_size, head_dim, dtype, device)
    if key not in HOPPER_CHECKS:
        stored = None if key in PENDING_CHECKS else stored_hopper_errors(state_size, head_dim, dtype, device)
        if key in PENDING_CHECKS:
            HOPPER_CHECKS[key] = _collect(key, state_size, head_dim, dtype, device)
        elif stored is not None:
            HOPPER_CHECKS[key] = stored
        elif torch.cuda.is_current_stream_capturing():
            return False
        else:
            HOPPER_CHECKS[key] = hopper_chunk_errors_isolated(state_size, head_dim, dtype, device)
    errors = HOPPER_CHECKS[key]
    return max(errors.values()) <= HOPPER_CHECK_TOLERANCE.get(dtype, 2e-3)


def start_hopper_checks(sizes, device) -> int:
    """Start, in the background, the self-checks a model will need; returns how many children it started.

    ``sizes``: (state size, head dim, dtype) per Mamba-2 layer shape, the dtype being what the scan sees
    (bf16 under bf16 autocast, else the parameters' dtype). Nothing to do (0) off CUDA, where ``ops/ssd.py``
    never takes the guard-lifted kernel (no FLA, ``mamba_ssm`` installed, no Hopper guard), or where the
    verdict is known (this process or on disk). ``hopper_chunk_verified`` collects the result.
    """
    if not hopper_checks_needed(device):
        return 0
    started = 0
    for state_size, head_dim, dtype in sizes:
        key = _check_key(state_size, head_dim, dtype, device)
        if key in HOPPER_CHECKS or key in PENDING_CHECKS:
            continue
        stored = stored_hopper_errors(state_size, head_dim, dtype, device)
        if stored is not None:
            HOPPER_CHECKS[key] = stored
            continue
        PENDING_CHECKS[key] = _start_child(key)
        started += 1
    return started


def hopper_checks_needed(device) -> bool:
    """Would ``ops/ssd.py`` ask ``hopper_chunk_verified`` on ``device``?"""
    return (torch.device(device).type == "cuda" and fla_available() and mamba_ssm_chunk_scan() is None
            and gated_chunk_backward_guarded())


def hopper_chunk_errors_isolated(state_size: int, head_dim: int, dtype: torch.dtype, device,
                                 timeout: float = HOPPER_CHECK_TIMEOUT) -> dict[str, float]:
    """``hopper_chunk_errors`` in a child process on the same GPU; ``{"fault": inf}`` if the child fails.

    A fault means the guard-lifted kernel is unusable here: ``ops/ssd.py`` then takes ``chunk_gla``.
    """
    key = _check_key(state_size, head_dim, dtype, device)
    PENDING_CHECKS[key] = _start_child(key, timeout)
    return _collect(key, state_size, head_dim, dtype, device)


def _check_key(state_size, head_dim, dtype, device) -> tuple:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" are one check
        device = torch.device("cuda", torch.cuda.current_device())
    return state_size, head_dim, dtype, str(device)


def _start_child(key: tuple, timeout: float = HOPPER_CHECK_TIMEOUT) -> ChildCheck:
    state_size, head_dim, dtype, device = key
    return ChildCheck("groundthink.ops.hopper_check_child",
                      [str(state_size), str(head_dim), _dtype_name(dtype), str(torch.device(device).index)], timeout)


def _collect(key, state_size, head_dim, dtype, device) -> dict[str, float]:
    """The pending child's errors, stored on disk unless its failure says nothing about the kernel."""
    result = PENDING_CHECKS.pop(key).result()
    errors = _valid_errors(result.value)
    if errors is None:
        errors = {"fault": math.inf}
        reason = result.reason or f"its result {result.value!r} is not a set of errors"
        _warn_fault(state_size, head_dim, dtype, reason)
        if result.started and not result.environmental:  # the kernels ran and failed: a verdict
            store_hopper_errors(state_size, head_dim, dtype, device, errors, reason)
    else:
        store_hopper_errors(state_size, head_dim, dtype, device, errors, None)
    return errors


def _warn_fault(state_size, head_dim, dtype, reason: str, stored_in=None) -> None:
    where = f" (a verdict stored in {stored_in}; GROUNDTHINK_KERNEL_CACHE=0 or deleting it checks again)" \
        if stored_in else ""
    warnings.warn(f"FLA's chunk_simple_gla backward without its Hopper guard failed its self-check (state size "
                  f"{state_size}, head dim {head_dim}, {dtype}): {reason}{where}; Mamba-2 uses chunk_gla here "
                  "(correct, slower)", RuntimeWarning, stacklevel=3)


def _record_key(state_size, head_dim, dtype, device) -> dict | None:
    environment = kernel_environment(device)
    if environment is None:
        return None
    return {"check": "fla-hopper-chunk-simple-gla", "version": HOPPER_CHECK_VERSION, **environment,
            "state_size": int(state_size), "head_dim": int(head_dim), "dtype": _dtype_name(dtype)}


def stored_hopper_errors(state_size, head_dim, dtype, device) -> dict[str, float] | None:
    """The errors a previous process measured for this configuration on this GPU model and software, if any."""
    key = _record_key(state_size, head_dim, dtype, device)
    record = None if key is None else read_record("hopper", key)
    errors = _valid_errors(None if record is None else record.get("errors"))
    if errors is not None and record.get("reason"):
        _warn_fault(state_size, head_dim, dtype, record["reason"], record_path("hopper", key))
    return errors


def store_hopper_errors(state_size, head_dim, dtype, device, errors: dict, reason: str | None) -> None:
    key = _record_key(state_size, head_dim, dtype, device)
    if key is not None:
        write_record("hopper", key, {"errors": errors, "reason": reason})


def _valid_errors(errors) -> dict[str, float] | None:
    """``errors`` if it is a non-empty map of names to non-negative numbers (inf: a fault), else None."""
    if not isinstance(errors, dict) or not errors:
        return None
    if not all(isinstance(name, str) and isinstance(value, (int, float)) and not isinstance(value, bool)
               and not math.isnan(value) and value >= 0 for name, value in errors.items()):
        return None
    return {name: float(value) for name, value in errors.items()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def hopper_chunk_errors(state_size: int, head_dim: int, dtype: torch.dtype, device,
                        seq_len: int = 128, heads: int = 2) -> dict[str, float]:
    """Relative L2 errors of the guard-lifted ``chunk_simple_gla`` against ``chunk_gla``, per tensor."""
    from fla.ops.gla import chunk_gla

    generator = torch.Generator(device=device).manual_seed(0)
    shape = (1, seq_len, heads)

    def rand(*size, dtype=dtype):
        return torch.randn(*size, generator=generator, device=device, dtype=torch.float32).to(dtype)

    q, k = rand(*shape, state_size) * state_size ** -0.5, rand(*shape, state_size)
    v = rand(*shape, head_dim)
    g = -torch.rand(*shape, generator=generator, device=device) * 0.2            # log decay in (-0.2, 0]
    h0 = rand(1, heads, head_dim, state_size, dtype=torch.float32)
    grad_out = rand(*shape, head_dim)
    results = []
    for kernel in ("simple", "gla"):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v, g, h0)]
        qi, ki, vi, gi, hi = inputs
        if kernel == "simple":
            out, _ = chunk_simple_gla_hopper(qi, ki, vi, gi, 1.0, hi, True, True)
        else:
            out, _ = chunk_gla(q=qi, k=ki, v=vi, g=gi.unsqueeze(-1).expand(*ki.shape), scale=1.0,
                               initial_state=hi, output_final_state=True, state_v_first=True)
        out.backward(grad_out)
        results.append([out.detach()] + [t.grad for t in inputs])
    names = ("out", "dq", "dk", "dv", "dg", "dh0")
    return {name: float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))
            for name, a, b in zip(names, *results)}
