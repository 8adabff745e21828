"""The sweep's progress and ETA: the training steps of the runs to do, summed over runs.

A resumed run counts from its checkpoint's step, one that only needs its end-of-run measurements counts
none. ``--parallel`` reads how far each running run is from the tail of its ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from groundthink.experiments.spec import SweepSpec
from groundthink.progress import Progress


class Tracker:
    POLL_S = 5.0  # how often --parallel reads the running runs' step from their metrics.jsonl

    def __init__(self, spec: SweepSpec, todo: list, console: bool):
        from groundthink.training.checkpoint import list_checkpoints, read_meta
        from groundthink.training.config import TrainConfig

        self.spans = {}  # run folder -> (first step, last step) of what is left to train
        for item in todo:
            last = spec.resolved(item.run.config).get("train", {}).get("steps", TrainConfig.steps)
            first = read_meta(list_checkpoints(item.run_dir)[-1])["step"] if item.state == "resume" else 0
            self.spans[item.run_dir] = (first, last) if item.state != "measure" else (0, 0)
        self.done = dict.fromkeys(self.spans, 0)
        # On a console: a bar, or plain status lines every few seconds; else (a caller's log) quiet.
        self.progress = Progress(self.total(), "sweep", unit="steps", quiet=not console, closing_line=False)

    def total(self) -> int:
        return sum(last - first for first, last in self.spans.values())

    def poll(self, items: list) -> None:
        """Steps the running runs have logged so far (the last record of their metrics.jsonl)."""
        for item in items:
            first, last = self.spans[item.run_dir]
            self.done[item.run_dir] = max(0, min(last, logged_step(item.run_dir)) - first)
        self.progress.update(sum(self.done.values()) - self.progress.n)

    def finished(self, item) -> str:
        """A run is over (completed, stopped early, failed): what it did not train leaves the total."""
        self.poll([item])
        first = self.spans[item.run_dir][0]
        self.spans[item.run_dir] = (first, first + self.done[item.run_dir])
        self.progress.set_total(self.total())
        return self.progress.status()


def logged_step(run_dir: Path) -> int:
    """The step of the last complete record in ``run_dir/metrics.jsonl`` (only its tail is read)."""
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # cut short, or the first, partial line of the tail
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            return record["step"]
    return 0
