"""FLA's chunked gated-linear-attention backward on Hopper GPUs with Triton 3.4 - 3.7.0 (FLA #640).

FLA 0.6 raises in ``chunk_bwd_dqkwg`` (the backward of ``chunk_simple_gla``) on every Hopper GPU with these
Triton versions (torch 2.8 - 2.12.0 ship them), because the compiler miscompiles that kernel in some block
configurations (FLA #640's bisection found a 64-wide key block tiling wider keys; FLA 0.6 tiles keys up to
128 wide on Hopper). The guard is broader than the bug, and the alternative (``chunk_gla`` with the decay
repeated over the state) is much slower, so:

- ``hopper_chunk_verified`` runs the guard-lifted kernel against ``chunk_gla`` once per (state size, head
  dim, precision, device) — outputs and every gradient on random inputs of two chunks — and says whether
  they agree. The check runs in a child process: at some sizes the miscompiled kernel does not just
  compute wrong values but faults (illegal memory access, measured on an H100 at state size 16, head dim
  32), which would leave this process's CUDA context unusable;
- ``chunk_simple_gla_hopper`` is FLA's ``chunk_simple_gla`` whose backward runs with the guard lifted. Only
  ``ops/ssd.py`` calls it, and only where the check passed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch


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


def hopper_chunk_verified(state_size: int, head_dim: int, dtype: torch.dtype, device) -> bool:
    """Does the guard-lifted ``chunk_simple_gla`` match ``chunk_gla`` here (outputs and every gradient)?

    Checked once per (state size, head dim, precision, device) on random inputs of two chunks; inside a
    CUDA graph capture (no checks possible) an unchecked configuration counts as not verified.
    """
    key = (state_size, head_dim, dtype, str(torch.device(device)))
    if key not in HOPPER_CHECKS:
        if torch.cuda.is_current_stream_capturing():
            return False
        HOPPER_CHECKS[key] = hopper_chunk_errors_isolated(state_size, head_dim, dtype, device)
    errors = HOPPER_CHECKS[key]
    return max(errors.values()) <= HOPPER_CHECK_TOLERANCE.get(dtype, 2e-3)


HOPPER_CHECKS: dict[tuple, dict[str, float]] = {}


def hopper_chunk_errors_isolated(state_size: int, head_dim: int, dtype: torch.dtype, device,
                                 timeout: float = 600) -> dict[str, float]:
    """``hopper_chunk_errors`` in a child process on the same GPU; ``{"fault": inf}`` if the child fails.

    A fault means the guard-lifted kernel is unusable here: ``ops/ssd.py`` then takes ``chunk_gla``.
    """
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    command = [sys.executable, "-m", "groundthink.ops.fla_hopper", str(state_size), str(head_dim),
               str(dtype).removeprefix("torch."), str(index)]
    # The child imports this package from where the parent did (a checkout on sys.path need not be installed).
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        if child.returncode == 0:
            return json.loads(child.stdout.strip().splitlines()[-1])
        reason = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
    except (subprocess.TimeoutExpired, ValueError, IndexError) as err:
        reason = f"{type(err).__name__}: {err}"
    warnings.warn(f"FLA's chunk_simple_gla backward without its Hopper guard failed its self-check (state size "
                  f"{state_size}, head dim {head_dim}, {dtype}): {reason[:300]}; Mamba-2 uses chunk_gla here "
                  "(correct, slower)", RuntimeWarning, stacklevel=2)
    return {"fault": math.inf}


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


if __name__ == "__main__":  # the child process of hopper_chunk_errors_isolated: STATE HEAD_DIM DTYPE DEVICE_INDEX
    state, head, dtype_name, index = sys.argv[1:5]
    import fla.layers  # noqa: F401  every FLA kernel loaded, so the parent's GROUNDTHINK_FLA_AUTOTUNE applies to all

    from groundthink.ops.backend import fla_available

    fla_available()
    errors = hopper_chunk_errors(int(state), int(head), getattr(torch, dtype_name), torch.device("cuda", int(index)))
    torch.cuda.synchronize()
    print(json.dumps(errors))
