"""Count the ATen operations one decode step runs: a CPU-measurable proxy for the kernels it launches.

At batch 1 a decode step is launch-bound: on a GPU each ATen op that computes something is (at least) one
kernel, and a CUDA graph replays exactly those kernels. Views, reshapes and allocations launch nothing, so
they are not counted. Inductor (``torch.compile``) then fuses the element-wise ops; matrix products stay
one kernel each unless inductor's GEMV decomposition turns them into fusable reductions, hence the separate
``matmul`` count.
"""
from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only allocate memory or describe it: no kernel.
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "detach",
             "_local_scalar_dense", "set_", "_unsafe_view"}
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "_convolution", "conv1d"}


def launches_kernel(func) -> bool:
    """False for views (the output aliases an input) and pure allocations."""
    schema = func._schema
    if func.overloadpacket.__name__ in NO_KERNEL:
        return False
    if schema.returns and schema.returns[0].alias_info is not None and not schema.returns[0].alias_info.is_write:
        return False
    return True


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as ops: step()``; then ``ops.counts`` (op name -> calls) and ``ops.total``."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if launches_kernel(func):
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def matmuls(self) -> int:
        return sum(n for name, n in self.counts.items() if name in MATMULS)

    def summary(self, top: int = 12) -> dict:
        return {"ops": self.total, "matmuls": self.matmuls, "by_op": dict(self.counts.most_common(top))}


def count_ops(fn, *args, **kwargs) -> tuple[OpCounter, object]:
    """Run ``fn(*args, **kwargs)`` once and count its kernel-launching ATen ops."""
    with OpCounter() as counter:
        result = fn(*args, **kwargs)
    return counter, result
