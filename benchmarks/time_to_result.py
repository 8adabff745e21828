"""Time to a result: the three cases a new user runs first, each cold and warm, as whole processes.

    python benchmarks/time_to_result.py --data ../shared/data --json benchmarks/results/<date>-<gpu>/time_to_result.json

Cases: ``readme-main`` (``groundthink train``, the README's main command), ``char-1000`` (the seed design's char run:
``--config configs/shakespeare-char.yaml``, GF-MH, 1000 steps, 10 evaluations, checkpoints) and
``fusion-sweep`` (``groundthink sweep configs/sweeps/fusion.yaml``: 12 variants x 3 seeds). ``cold`` runs
with empty on-disk caches (GroundThink's and Triton's: kernels compile and autotune from nothing, as on a
fresh machine); ``warm`` is the next process with the caches the cold one left. Each case gets its own
caches, so one case's kernels do not warm another's. ``phases`` is the run's own clock (summary.json; summed
over a sweep's runs); ``steps_s`` its training steps.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ("readme-main", "char-1000", "fusion-sweep")


def case_command(case: str, out: Path, data: Path, sweep_parallel: int, extra: list[str]) -> list[str]:
    groundthink = [sys.executable, "-m", "groundthink"]
    if case == "readme-main":
        return [*groundthink, "train", "--out", str(out), *extra]
    if case == "char-1000":
        return [*groundthink, "train", "--config", str(REPO / "configs" / "shakespeare-char.yaml"),
                "--data", str(data / "tinyshakespeare.txt"), "--out", str(out), *extra]
    return [*groundthink, "sweep", str(REPO / "configs" / "sweeps" / "fusion.yaml"), "--data-root", str(data),
            "--out", str(out), "--parallel", str(sweep_parallel), *extra]


def summaries(out: Path) -> list[dict]:
    paths = [out / "summary.json"] if (out / "summary.json").is_file() else sorted(out.glob("*/seed*/summary.json"))
    return [json.loads(path.read_text()) for path in paths]


def run_case(case: str, cache: str, caches: Path, work: Path, data: Path, sweep_parallel: int,
             extra: list[str], log) -> dict:
    out = work / f"{case}-{cache}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, GROUNDTHINK_CACHE=str(caches), TRITON_CACHE_DIR=str(caches / "triton"),
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = case_command(case, out, data, sweep_parallel, extra)
    log(f"== {case} ({cache}): {' '.join(command[1:])}")
    started = time.perf_counter()
    with open(work / f"{case}-{cache}.log", "w") as output:
        process = subprocess.run(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.perf_counter() - started
    runs = summaries(out)
    phases: dict[str, float] = {}
    for summary in runs:
        for name, seconds in (summary.get("phases") or {}).items():
            phases[name] = round(phases.get(name, 0.0) + seconds, 3)
    row = {"case": case, "cache": cache, "wall_s": round(wall, 2), "steps_s": phases.get("steps"),
           "phases": phases, "runs": len(runs), "exit_status": process.returncode,
           "statuses": sorted({s.get("status") for s in runs}),
           "final_val_loss": [s.get("final", {}).get("val_loss") for s in runs][:3]}
    log(f"   {wall:.1f} s wall, {len(runs)} run(s), exit {process.returncode}, phases {phases}")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--cache", default="cold,warm", help="cold, warm or both (warm reuses the cold run's caches)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder with tinyshakespeare.txt")
    parser.add_argument("--sweep-parallel", type=int, default=4, help="worker processes of the sweep")
    parser.add_argument("--work", default=None, help="folder for the runs and caches (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--extra", action="append", default=[], help="an argument added to every command")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; valid: {', '.join(CASES)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="gt-ttr-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    result = {"device_name": device_name(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/time_to_result.py", *(argv or sys.argv[1:])]),
              "cases": rows}
    for case in cases:
        caches = work / f"cache-{case}"
        shutil.rmtree(caches, ignore_errors=True)  # cold: nothing compiled, tuned or checked yet
        for cache in args.cache.split(","):
            rows.append(run_case(case, cache, caches, work, Path(args.data).resolve(), args.sweep_parallel,
                                 args.extra, lambda line: print(line, flush=True)))
            if args.json:  # after every case: a run cut short by a time limit keeps what it measured
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(r["exit_status"] == 0 for r in rows) else 1


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    raise SystemExit(main())
