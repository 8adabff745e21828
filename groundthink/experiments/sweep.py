"""The sweep runner: the run matrix of a spec, trained one after another or N at a time, resumable.

Every run is a normal run folder (``groundthink train``'s layout) plus ``sweep_run.json`` (its identity) and,
once finished, ``final_metrics.json`` (``measure.py``). Rerunning the same command skips finished runs,
resumes interrupted ones from their latest checkpoint, and only measures runs whose training finished.
A folder made by a different spec (another config, another measurement) is an error, never overwritten.

``--parallel N`` starts N worker processes (``worker.py``) and feeds them runs as they free up: small
models leave a GPU mostly idle, so several runs share it; each worker keeps its compiled kernels across
the runs it trains. Ctrl-C / SIGTERM: each training run checkpoints and stops, and the results so far are
written; ``--time-budget`` stops starting runs that would not finish in time (for machines lent by the
minute).
"""
from __future__ import annotations

import collections
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from groundthink.data.files import read_json
from groundthink.errors import UserError
from groundthink.experiments.spec import RunSpec, SweepSpec, check_data
from groundthink.experiments.worker import SWEEP_RUN, StopFlag, execute_run, run_state

SWEEP_RECORD = "sweep.json"
EXCLUDED_FROM_PACK = ("checkpoints", "tensorboard")


@dataclass
class Planned:
    run: RunSpec
    run_dir: Path
    state: str          # done | measure | resume | new


def default_out(spec: SweepSpec) -> Path:
    return Path("runs") / "sweeps" / spec.name


def run_meta(spec: SweepSpec, run: RunSpec) -> dict:
    return {"sweep": spec.name, "label": run.label, "model": run.model, "key": run.key, "variant": run.variant,
            "seed": run.seed, "config": run.config, "measure": asdict(spec.measure), "data_root": spec.data_root}


def first_difference(old, new, prefix: str = "") -> str:
    """``key: old there, new here`` for the first differing leaf of two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {old!r} there, {new!r} here"


def plan(spec: SweepSpec, out: Path) -> list[Planned]:
    """Each run's folder and state; refuses folders that another spec made."""
    planned = []
    for run in spec.runs:
        run_dir = out / run.folder
        meta = read_json(run_dir / SWEEP_RUN)
        if meta is None and run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"{run_dir} exists but was not made by groundthink sweep; pass another --out or remove it")
        if meta is not None:
            wanted = run_meta(spec, run)
            for key in ("config", "measure"):
                if meta.get(key) != wanted[key]:
                    raise UserError(f"{run_dir} was made by a different sweep spec ({first_difference(meta.get(key), wanted[key])}); "
                                    f"pass another --out, or remove the folder to rerun it")
        planned.append(Planned(run, run_dir, run_state(run_dir) if meta is not None else "new"))
    return planned


def write_meta(spec: SweepSpec, item: Planned) -> None:
    from groundthink.data.files import atomic_write_text

    item.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(item.run_dir / SWEEP_RUN, json.dumps(run_meta(spec, item.run), indent=1) + "\n")


def describe(item: Planned) -> str:
    if item.state == "resume":
        from groundthink.training.checkpoint import list_checkpoints, read_meta

        return f"resume from step {read_meta(list_checkpoints(item.run_dir)[-1])['step']}"
    return item.state


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} x {names[0]}" if len(names) > 1 else names[0]
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def record_invocation(out: Path, spec: SweepSpec, argv: list[str], parallel: int) -> None:
    from groundthink.data.files import atomic_write_text

    record = read_json(out / SWEEP_RECORD) or {"sweep": spec.name, "spec": str(spec.path), "invocations": []}
    record["invocations"].append({"argv": argv, "machine": machine(), "parallel": parallel,
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_RECORD, json.dumps(record, indent=1) + "\n")


# --------------------------------------------------------------------------------------------------

class Budget:
    """Start a run only if the slowest run so far would still end within ``seconds`` of the start."""

    def __init__(self, seconds: float | None):
        self.seconds, self.start, self.longest = seconds, time.perf_counter(), 0.0

    def finished(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)

    def allows_another(self) -> bool:
        return self.seconds is None or time.perf_counter() - self.start + self.longest <= self.seconds


def result_line(item: Planned, result: dict) -> str:
    from groundthink.experiments.measure import FINAL_METRICS

    line = f"{item.run.label} seed {item.run.seed}: {result['status']}"
    if result.get("seconds"):
        line += f" in {result['seconds']:.0f} s"
    summary = read_json(item.run_dir / "summary.json") or {}
    final = summary.get("final") or {}
    if result["status"] == "completed" and final.get("val_loss") is not None:
        line += f", val loss {final['val_loss']:.4f}"
        share = ((read_json(item.run_dir / FINAL_METRICS) or {}).get("ablation") or {}).get("ablation_share_mamba")
        if share is not None:
            line += f", Mamba ablation share {share:.1%}"
    if result.get("error"):
        line += f" ({result['error']})"
    return line


def run_in_process(spec: SweepSpec, todo: list[Planned], budget: Budget, log) -> dict[str, int]:
    counts = collections.Counter()
    with StopFlag() as stop:
        for index, item in enumerate(todo):
            if stop.set or not budget.allows_another():
                counts["left"] += len(todo) - index
                break
            log(f"[{index + 1}/{len(todo)}] {item.run.label} seed {item.run.seed}: {describe(item)}")
            write_meta(spec, item)
            try:
                result = execute_run(item.run_dir, stop)
            except UserError as err:
                result = {"status": "failed", "error": str(err)}
            counts[result["status"]] += 1
            budget.finished(result.get("seconds", 0.0))
            log(result_line(item, result))
            if result["status"] not in ("completed", "diverged", "failed"):
                stop.signal = stop.signal or signal.SIGINT  # the trainer took the signal: stop the sweep too
    return dict(counts, signal=stop.signal or 0)


class WorkerProcess:
    """A ``python -m groundthink.experiments.worker`` child fed run folders on stdin."""

    def __init__(self, index: int, parallel: int, gpus: int):
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
        if gpus > 1:  # one GPU per worker, round robin
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        # Own session: a terminal's Ctrl-C reaches only the sweep, which forwards exactly one SIGTERM.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "groundthink.experiments.worker", "--result-fd", str(write_fd),
             "--parallel", str(parallel)], stdin=subprocess.PIPE, text=True, env=env, pass_fds=(write_fd,),
            start_new_session=True)
        os.close(write_fd)
        self.results = os.fdopen(read_fd, "r")
        self.item: Planned | None = None
        self.signalled = False

    def assign(self, item: Planned) -> None:
        self.item, self.signalled = item, False
        self.process.stdin.write(f"{item.run_dir.resolve()}\n")
        self.process.stdin.flush()

    def terminate_run(self) -> None:
        if self.item is not None and not self.signalled and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.signalled = True

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        self.process.wait()
        self.results.close()


def visible_gpus(todo: list[Planned], spec: SweepSpec) -> int:
    devices = {spec.resolved(item.run.config).get("train", {}).get("device", "auto") for item in todo}
    if not devices <= {"auto", "cuda"}:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_in_workers(spec: SweepSpec, todo: list[Planned], parallel: int, budget: Budget, log) -> dict[str, int]:
    counts = collections.Counter()
    queue = collections.deque(todo)
    gpus = visible_gpus(todo, spec)
    selector = selectors.DefaultSelector()
    workers: list[WorkerProcess] = []
    started = 0
    with StopFlag() as stop:
        def feed(worker: WorkerProcess) -> None:
            nonlocal started
            if not queue or stop.set or not budget.allows_another():
                return
            item = queue.popleft()
            started += 1
            write_meta(spec, item)
            log(f"[{started}/{len(todo)}] {item.run.label} seed {item.run.seed}: {describe(item)} "
                f"(worker {workers.index(worker) + 1})")
            worker.assign(item)

        try:
            for index in range(min(parallel, len(queue))):
                worker = WorkerProcess(index, parallel, gpus)
                workers.append(worker)
                selector.register(worker.results, selectors.EVENT_READ, worker)
                feed(worker)
            while any(w.item is not None for w in workers):
                if stop.set:
                    for worker in workers:
                        worker.terminate_run()
                for key, _ in selector.select(timeout=0.2):
                    worker = key.data
                    line = worker.results.readline()
                    item, worker.item = worker.item, None
                    if line:
                        result = json.loads(line)
                    else:  # the worker died (killed, out of memory): its run folder stays resumable
                        selector.unregister(worker.results)
                        result = {"status": "failed", "error": f"worker exited with status {worker.process.wait()}"}
                    if item is None:
                        continue
                    counts[result["status"]] += 1
                    budget.finished(result.get("seconds", 0.0))
                    log(result_line(item, result))
                    if line:
                        feed(worker)
        except KeyboardInterrupt:  # a second Ctrl-C: ask the runs to abort now
            for worker in workers:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            raise
        finally:
            for worker in workers:
                worker.close()
            selector.close()
        counts["left"] += len(queue)
    return dict(counts, signal=stop.signal or 0)


# --------------------------------------------------------------------------------------------------

def run_sweep(spec: SweepSpec, out: Path | None = None, parallel: int = 1, time_budget: float | None = None,
              dry_run: bool = False, report_only: bool = False, results_dir: Path | None = None,
              pack: Path | None = None, argv: list[str] | None = None, log=print) -> int:
    """Run (or continue) the sweep, then write results and plots. Returns the command's exit status."""
    out = Path(out) if out is not None else default_out(spec)
    planned = plan(spec, out)
    todo = [item for item in planned if item.state != "done"]
    if dry_run:
        log(f"sweep {spec.name}: {len(spec.models)} models x {len(spec.variants)} variant(s) x "
            f"{len(spec.seeds)} seeds = {len(planned)} runs -> {out}")
        for item in planned:
            log(f"  {describe(item):<26} {item.run.folder}")
        steps = sum(spec.resolved(item.run.config).get("train", {}).get("steps", 0) for item in todo
                    if item.state in ("new", "resume"))
        log(f"{len(planned) - len(todo)} done, {len(todo)} to do (at most {steps:,} training steps)")
        return 0
    counts: dict = {}
    if not report_only and todo:
        check_data(spec)
        if parallel < 1:
            raise UserError(f"--parallel must be at least 1, got {parallel}")
        record_invocation(out, spec, argv or [], parallel)
        log(f"sweep {spec.name}: {len(planned)} runs, {len(planned) - len(todo)} already done, {len(todo)} to do "
            f"-> {out}" + (f" ({parallel} at a time)" if parallel > 1 else ""))
        budget = Budget(time_budget)
        if parallel == 1:
            counts = run_in_process(spec, todo, budget, log)
        else:
            counts = run_in_workers(spec, todo, parallel, budget, log)
    finished = sum(1 for item in planned if run_state(item.run_dir) == "done")
    write_report(spec, out, results_dir or out, log)
    if pack is not None:
        pack_runs(out, Path(pack))
        log(f"packed {out} (without {', '.join(EXCLUDED_FROM_PACK)}) into {pack}")
    left = len(planned) - finished
    log(f"{finished} of {len(planned)} runs finished" + (
        f"; {left} left: run the same command again to continue" if left else ""))
    if counts.get("signal"):
        return 128 + int(counts["signal"])
    return 1 if counts.get("failed") else 0


def write_report(spec: SweepSpec, out: Path, results_dir: Path, log) -> None:
    from groundthink.experiments.results import collect, write_results

    table = collect(spec, out)
    paths = write_results(spec, table, results_dir, out)
    try:
        from groundthink.experiments.plots import plot_all
    except ImportError:  # matplotlib missing (e.g. a bare GPU machine): tables only
        log("matplotlib is not installed: no plots (run again with --report where it is)")
    else:
        paths += plot_all(spec, table, results_dir)
    if paths:
        log("results: " + ", ".join(str(p) for p in paths))


def pack_runs(out: Path, archive: Path) -> None:
    """A .tar.gz of the sweep folder without checkpoints and TensorBoard files (what results need)."""
    def keep(info: tarfile.TarInfo):
        return None if any(part in EXCLUDED_FROM_PACK for part in Path(info.name).parts) else info

    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(out, arcname=out.name, filter=keep)
