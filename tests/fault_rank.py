"""A rank that fails on purpose, for the tests of failure handling (started by torchrun like a real job).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fault_rank.py crash:1:2 train ...

``crash:RANK:STEP`` makes that rank raise at the start of that (0-based) step; ``hang:RANK:STEP`` makes it
stop taking part (sleep) until a signal arrives (torchrun sends one when it ends the job), like a rank stuck
in a kernel or a deadlock. The rest is ``groundthink train`` unchanged.
"""
from __future__ import annotations

import sys
import time

from groundthink.cli.main import build_parser
from groundthink.cli.train import run
from groundthink.training.hooks import TrainerHook


class InjectedFault(TrainerHook):
    def __init__(self, kind: str, rank: int, step: int):
        self.kind, self.rank, self.step = kind, rank, step

    def on_step_start(self, state) -> None:
        if state.rank != self.rank or state.step != self.step:
            return
        if self.kind == "crash":
            raise RuntimeError(f"injected fault: rank {self.rank} crashed at step {self.step}")
        print(f"injected fault: rank {self.rank} hangs at step {self.step}", file=sys.stderr, flush=True)
        while not state.stop_requested:
            time.sleep(0.05)
        raise SystemExit(f"injected fault: rank {self.rank} was hanging at step {self.step} until signalled")


def parse_fault(spec: str) -> InjectedFault:
    kind, rank, step = spec.split(":")
    assert kind in ("crash", "hang"), spec
    return InjectedFault(kind, int(rank), int(step))


if __name__ == "__main__":
    fault = parse_fault(sys.argv[1])
    args = build_parser().parse_args(sys.argv[2:])
    raise SystemExit(run(args, hooks=[fault]))
