"""Where metrics go: ``metrics.jsonl`` in the run folder (one JSON object per line), TensorBoard when it
is installed, and the console (progress with an ETA, and a line per evaluation)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from groundthink.data.files import atomic_write_text
from groundthink.progress import Progress, usable_terminal

METRICS = "metrics.jsonl"


def clean(value):
    """JSON-safe: floats that are not finite become None, nested lists and dicts are cleaned too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    return value


class MetricsLogger:
    """Appends records ``{"kind": "train" | "eval" | "summary", "step": ..., ...}`` to ``metrics.jsonl``."""

    def __init__(self, run_dir, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(clean(record), allow_nan=False) + "\n")
        self.file.flush()
        if self.writer is not None and record.get("kind") in ("train", "eval"):
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a crash
    return records


def truncate_metrics(run_dir, step: int) -> None:
    """On resume: drop records after the checkpoint's step (they will be logged again) and old summaries."""
    path = Path(run_dir) / METRICS
    if path.is_file():
        kept = [r for r in read_metrics(run_dir) if r.get("kind") != "summary" and r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class Console:
    """Training progress over the steps (count, rate, ETA) plus one printed line per evaluation (stdout),
    through ``groundthink.progress``.

    On a usable terminal a tqdm bar (stderr) whose postfix is the latest train line. Without one (a pipe, a
    file, a zero-width pseudo-terminal) or with ``enabled=False`` (``train.progress: false``): plain status
    lines on stdout at a steady cadence, each with the latest loss: a log is never silent for long and
    never floods.
    """

    def __init__(self, total: int, initial: int, enabled: bool = True):
        bar = enabled and usable_terminal(sys.stderr)
        # Plain lines go to stdout with the eval lines: stderr stays for errors (one line each).
        self.progress = Progress(total, "train", unit="steps", initial=initial, bar=bar,
                                 stream=sys.stderr if bar else sys.stdout)

    def advance(self) -> None:
        self.progress.update(1)

    def train(self, record: dict) -> None:
        self.progress.set_postfix(f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  grad {record['grad_norm']:.2f}  "
                                  f"{record['tok_per_s']:,.0f} tok/s")

    def print(self, line: str) -> None:
        self.progress.write(line)

    def close(self) -> None:
        self.progress.close()


def format_eval(record: dict) -> str:
    parts = [f"step {record['step']:>6}", f"val loss {record['val_loss']:.4f}", f"ppl {record['val_ppl']:.2f}"]
    for key, fmt in (("recall_acc", "{:.1%}"), ("grad_ratio", "{:.3f}"), ("gate_rwkv", "{:.3f}")):
        if record.get(key) is not None:
            parts.append(f"{key} " + fmt.format(record[key]))
    return "  ".join(parts)
