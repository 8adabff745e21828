"""Wall time of the README's main command, ``groundthink train`` with no arguments, run as a user runs it.

    python benchmarks/bench_default_run.py                      # one run, torch's own thread count
    python benchmarks/bench_default_run.py --repeats 3 --json benchmarks/results/default_run.json
    python benchmarks/bench_default_run.py --budget 120         # exit status 1 when a run takes longer

Each repeat starts ``python -m groundthink train`` in a fresh temporary folder with its own token cache
(nothing reused between repeats), times it end to end (start-up, corpus generation, 300 steps, evals,
checkpoints) and reads the run's evals: val loss and recall accuracy at each eval step. The test suite
checks what the run learns (tests/test_train_cli.py); how long it takes depends on the machine and its load,
so it is measured here, not asserted there.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_run(threads: int | None) -> dict:
    """One ``groundthink train`` in a fresh folder: wall seconds, exit status and the evals it logged."""
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, GROUNDTHINK_CACHE=str(Path(folder) / "cache"), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("OMP_NUM_THREADS", None)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "groundthink", "train"], cwd=folder, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            return {"seconds": seconds, "returncode": proc.returncode, "error": proc.stderr.strip()[-2000:]}
        run = next((Path(folder) / "runs").iterdir())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [{"step": r["step"], "val_loss": r["val_loss"], "recall_acc": r.get("recall_acc")}
                 for r in records if r["kind"] == "eval"]
        return {"seconds": seconds, "returncode": 0, "evals": evals}


def describe(result: dict) -> str:
    if result["returncode"] != 0:
        return f"{result['seconds']:.1f} s, FAILED (exit {result['returncode']}): {result['error'].splitlines()[-1]}"
    curve = ", ".join(f"step {e['step']}: val loss {e['val_loss']:.2f}, recall {e['recall_acc']:.0%}"
                      for e in result["evals"])
    return f"{result['seconds']:.1f} s ({curve})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the run (default: torch's)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="exit status 1 when the median run takes longer than this")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    results = []
    for repeat in range(args.repeats):
        results.append(timed_run(args.threads))
        print(f"run {repeat + 1}: {describe(results[-1])}", flush=True)
    median = statistics.median(r["seconds"] for r in results)
    summary = {"command": "groundthink train", "repeats": args.repeats, "threads": args.threads,
               "median_seconds": median, "runs": results, "cpus": os.cpu_count(),
               "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
               "torch": importlib.metadata.version("torch")}
    print(f"median wall time of `groundthink train`: {median:.1f} s over {args.repeats} run(s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if any(r["returncode"] != 0 for r in results):
        return 2
    if args.budget is not None and median > args.budget:
        print(f"over budget: {median:.1f} s > {args.budget:.0f} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
