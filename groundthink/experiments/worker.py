"""One sweep run, start to finish: train (or resume), then the end-of-run measurements.

``execute_run(run_dir)`` needs only the run folder: ``sweep_run.json`` (written by the sweep) holds the
run's config, the data root and what to measure. The sweep calls it in its own process
(``--parallel 1``) or hands run folders to worker processes (``python -m groundthink.experiments.worker``),
which read one folder per line on stdin, train with their output in ``RUN_DIR/train.log``, and answer one
JSON line per run on the file descriptor given by ``--result-fd``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from groundthink.data import load_data, load_tokenizer
from groundthink.data.files import atomic_write_text, read_json
from groundthink.devices import resolve_device
from groundthink.diagnostics.curves import save_run_curves
from groundthink.errors import UserError
from groundthink.experiments.measure import FINAL_METRICS, final_measurements
from groundthink.experiments.spec import Measure, build_config
from groundthink.training.checkpoint import list_checkpoints, load_run
from groundthink.training.hooks import TrainingDiverged
from groundthink.training.logging import clean
from groundthink.training.precision import autocast_for
from groundthink.training.trainer import Trainer

SWEEP_RUN = "sweep_run.json"
SUMMARY = "summary.json"
FINISHED = ("completed", "plateau", "diverged")   # statuses after which a run is never trained again


def run_state(run_dir: Path) -> str:
    """``done`` | ``measure`` (trained, end-of-run measurements missing) | ``resume`` | ``new``."""
    summary = read_json(run_dir / SUMMARY) or {}
    if summary.get("status") in FINISHED:
        if summary["status"] == "diverged" or (run_dir / FINAL_METRICS).is_file():
            return "done"
        return "measure"
    return "resume" if list_checkpoints(run_dir) else "new"


class StopFlag:
    """SIGINT / SIGTERM outside training: the first asks to stop after the current run, a second aborts.

    While a run trains, the trainer's own handler takes over (checkpoint, stop) and restores this one after.
    """

    def __init__(self):
        self.signal: int | None = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    @property
    def set(self) -> bool:
        return self.signal is not None


def execute_run(run_dir, stop: StopFlag | None = None, parallel: int = 1) -> dict:
    """Train the run in ``run_dir`` to the end (or resume it), then measure. Returns a result line."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    meta = read_json(run_dir / SWEEP_RUN)
    if meta is None:
        raise UserError(f"{run_dir} has no readable {SWEEP_RUN}; it was not made by groundthink sweep")
    config = build_config(meta["config"], meta["data_root"])
    state = run_state(run_dir)
    result = {"run": str(run_dir), "state": state}
    if state == "done":
        return {**result, "status": "done", "seconds": 0.0}
    model = data = None
    if state in ("new", "resume"):
        trainer = Trainer(config, run_dir, resume=state == "resume")
        if stop is not None and stop.set:
            return {**result, "status": "interrupted", "seconds": time.perf_counter() - started}
        try:
            summary = trainer.fit()
            save_run_curves(run_dir)  # RUN_DIR/curves.png, as groundthink train draws it
        except TrainingDiverged as err:
            return {**result, "status": "diverged", "error": str(err), "seconds": time.perf_counter() - started}
        if summary["status"] not in FINISHED:
            return {**result, "status": summary["status"], "step": summary["step"],
                    "seconds": time.perf_counter() - started}
        model, data, device = trainer.model, trainer.data, trainer.device
        autocast = trainer.autocast
    else:  # trained earlier; only the measurements are missing

        loaded = load_run(run_dir, which="last")
        device = resolve_device(config.train.device, "train.device")
        model = loaded.model.to(device)
        data = load_data(config.data, load_tokenizer(run_dir / "tokenizer.json"))
        autocast = autocast_for(device, config.train.precision)
    metrics = final_measurements(model, data, config, Measure(**meta.get("measure", {})), device, autocast)
    metrics["parallel"] = parallel
    atomic_write_text(run_dir / FINAL_METRICS, json.dumps(clean(metrics), indent=1) + "\n")
    del model, data
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {**result, "status": "completed", "seconds": time.perf_counter() - started}


# ---- worker process -------------------------------------------------------------------------------

def redirect_output(path: Path):
    """Point this process's stdout and stderr (file descriptors, so C-level output too) at ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="a groundthink sweep worker (started by groundthink sweep)")
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args(argv)
    results = os.fdopen(args.result_fd, "w", buffering=1)
    with StopFlag() as stop:
        for line in sys.stdin:
            run_dir = Path(line.strip())
            if not line.strip():
                continue
            if stop.set:
                results.write(json.dumps({"run": str(run_dir), "status": "interrupted", "seconds": 0.0}) + "\n")
                continue
            redirect_output(run_dir / "train.log")
            try:
                result = execute_run(run_dir, stop, args.parallel)
            except UserError as err:
                result = {"run": str(run_dir), "status": "failed", "error": str(err)}
            except Exception as err:  # noqa: BLE001 - report, keep serving the other runs
                import traceback

                traceback.print_exc()
                result = {"run": str(run_dir), "status": "failed", "error": f"{type(err).__name__}: {err}"}
            print(f"sweep worker: {result['status']}", flush=True)
            results.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
