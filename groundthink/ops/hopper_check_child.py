"""The Hopper self-check's child process (``ops/fla_hopper.py``): ``python -m groundthink.ops.hopper_check_child
STATE_SIZE HEAD_DIM DTYPE DEVICE_INDEX`` prints ``STARTED_MARK`` once CUDA is up, then the errors as JSON.

A module of its own that nothing imports: ``-m`` on a module that the package's import already loaded
would run it a second time (with a warning from runpy).
"""
from __future__ import annotations

import json
import sys

import torch

from groundthink.ops.backend import fla_available
from groundthink.ops.child_check import STARTED_MARK
from groundthink.ops.fla_hopper import hopper_chunk_errors


def main(argv: list[str]) -> None:
    state_size, head_dim, dtype_name, index = argv
    # fla_available() loads every FLA kernel and sets up its autotuners as in the parent (the environment
    # carries GROUNDTHINK_FLA_AUTOTUNE and the cache switches).
    if not fla_available():
        raise SystemExit("the Hopper self-check needs FLA's kernels on a CUDA device; this child has none "
                         f"(CUDA available: {torch.cuda.is_available()})")
    device = torch.device("cuda", int(index))
    torch.cuda.set_device(device)
    print(STARTED_MARK, flush=True)
    errors = hopper_chunk_errors(int(state_size), int(head_dim), getattr(torch, dtype_name), device)
    torch.cuda.synchronize(device)
    print(json.dumps(errors), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
