"""``torch.compile`` for the decode step, in three modes.

At batch 1 every matrix product of a step is a matrix-vector product (one token), and with the default
inductor settings each one stays a separate cuBLAS call with separate element-wise kernels around it.

- ``"default"``: plain inductor (element-wise ops fused between the cuBLAS calls).
- ``"gemv"``: every one-row product (``mm`` / ``addmm`` / ``bmm`` whose left side has one row, or whose
  right side one column) is rewritten as multiply-and-sum, which inductor compiles as a reduction and
  fuses with the element-wise work before and after it (the lerps, biases, activations): fewer kernels
  than a cuBLAS call plus separate element-wise kernels. Inductor does the same for ``mm`` / ``bmm`` on
  CUDA under ``coordinate_descent_tuning`` (which this mode also turns on, to tune those reductions), but
  not for ``addmm`` (every linear layer with a bias); here the rewrite covers all three, on any device.
- ``"max-autotune"``: inductor's ``max-autotune-no-cudagraphs`` (the GEMV rewrite of ``mm`` / ``bmm``
  plus autotuned Triton templates for what is left); slowest to compile.
"""
from __future__ import annotations

import torch

COMPILE_MODES = ("default", "gemv", "max-autotune")
aten = torch.ops.aten


def _one_row(t: torch.Tensor, dim: int) -> bool:
    return isinstance(t.shape[dim], int) and t.shape[dim] == 1


def mm_as_reduction(a, b):
    if _one_row(a, 0) or _one_row(b, 1):
        return (a.unsqueeze(2) * b.unsqueeze(0)).sum(dim=1)
    return NotImplemented


def addmm_as_reduction(bias, a, b, beta=1, alpha=1):
    if _one_row(a, 0) or _one_row(b, 1):
        out = (a.unsqueeze(2) * b.unsqueeze(0)).sum(dim=1)
        return (out if alpha == 1 else alpha * out) + (bias if beta == 1 else beta * bias)
    return NotImplemented


def bmm_as_reduction(a, b):
    if _one_row(a, 1) or _one_row(b, 2):
        return (a.unsqueeze(-1) * b.unsqueeze(1)).sum(dim=2)
    return NotImplemented


def gemv_decompositions() -> dict:
    """Inductor's decomposition table with the one-row products rewritten as reductions."""
    from torch._decomp import decomposition_table  # noqa: F401 - populates the table inductor selects from
    from torch._inductor.decomposition import select_decomp_table

    table = dict(select_decomp_table())
    table.update({aten.mm.default: mm_as_reduction, aten.addmm.default: addmm_as_reduction,
                  aten.bmm.default: bmm_as_reduction})
    return table


def gemv_backend(graph_module, example_inputs):
    """An inductor backend whose decompositions turn one-row products into fusable reductions."""
    from torch._inductor.compile_fx import compile_fx

    # The config patch also keeps inductor's caches from handing back a default-mode compilation of the
    # same graph: their keys include the config but not custom decompositions. (On CPU it tunes nothing.)
    return compile_fx(graph_module, example_inputs, decompositions=gemv_decompositions(),
                      config_patches={"coordinate_descent_tuning": True, "fx_graph_cache": False})


def compile_step(fn, mode: str = "default"):
    """``fn`` compiled for a fixed-shape decode step in one of ``COMPILE_MODES``."""
    if mode == "default":
        return torch.compile(fn, dynamic=False)
    if mode == "gemv":
        return torch.compile(fn, dynamic=False, backend=gemv_backend)
    if mode == "max-autotune":
        return torch.compile(fn, dynamic=False, mode="max-autotune-no-cudagraphs")
    raise ValueError(f"unknown compile mode {mode!r}; valid: {', '.join(COMPILE_MODES)}")
