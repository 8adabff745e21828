"""Which GPU kernels a groundthink command compiles, when, and for how long (a cold start's time, explained).

    python benchmarks/compile_log.py --json compile_log.json -- train --config configs/shakespeare-char.yaml ...

Every Triton compilation is timed (its kernel's name, the seconds since the start, how long it took) and each
evaluation's start and end are marked, so the report says which kernels the training steps compiled and
which only the evaluation needed. Autotuning compiles several configurations of one kernel: each counts.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
EVENTS: list[dict] = []


def install() -> None:
    import triton.compiler
    import triton.compiler.compiler as compiler

    original = compiler.compile

    def timed_compile(src, *args, **kwargs):
        began = time.perf_counter()
        try:
            return original(src, *args, **kwargs)
        finally:
            name = getattr(src, "name", None) or getattr(getattr(src, "fn", None), "__name__", "?")
            EVENTS.append({"kind": "compile", "name": str(name), "at_s": round(began - STARTED, 3),
                           "seconds": round(time.perf_counter() - began, 3)})

    compiler.compile = timed_compile
    triton.compiler.compile = timed_compile

    from groundthink.training.trainer import Trainer

    run_eval = Trainer.run_eval

    def marked_run_eval(self):
        EVENTS.append({"kind": "eval_start", "step": self.step, "at_s": round(time.perf_counter() - STARTED, 3)})
        try:
            return run_eval(self)
        finally:
            EVENTS.append({"kind": "eval_end", "step": self.step, "at_s": round(time.perf_counter() - STARTED, 3)})

    Trainer.run_eval = marked_run_eval


def summary() -> dict:
    evals = [(e["at_s"], f["at_s"]) for e, f in zip([e for e in EVENTS if e["kind"] == "eval_start"],
                                                    [e for e in EVENTS if e["kind"] == "eval_end"])]
    by_place = collections.defaultdict(lambda: collections.Counter())
    seconds = collections.defaultdict(float)
    for event in EVENTS:
        if event["kind"] != "compile":
            continue
        place = "eval" if any(a <= event["at_s"] <= b for a, b in evals) else "train/setup"
        by_place[place][event["name"]] += 1
        seconds[place] += event["seconds"]
    return {"compile_seconds": {k: round(v, 2) for k, v in seconds.items()},
            "compiles": {k: dict(v.most_common()) for k, v in by_place.items()}, "evals": evals}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then a groundthink command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    install()
    from groundthink.cli.main import main as groundthink

    code = groundthink(command)
    report = {"command": ["groundthink", *command], "summary": summary(), "events": EVENTS}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1), file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
