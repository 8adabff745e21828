"""CPU training throughput of GF-MH at the seed design's char config (hidden 128, 8 blocks, batch 32 x seq 64):
a bare loop (sample a batch, forward, backward, clip, AdamW step) against ``Trainer.fit`` on the same model,
data and optimizer, so the number is the trainer's overhead and nothing else.

    python benchmarks/bench_cpu_train.py                        # Tiny Shakespeare from ../shared/data if present
    python benchmarks/bench_cpu_train.py --steps 30 --repeats 3 --json benchmarks/results/cpu_train.json

The two are measured alternately ``--repeats`` times (machine load drifts); each reports tokens/s over the
steps after ``--warmup`` steps, and the medians are compared. The trainer's figure is measured by a hook
between the end of the warmup steps and the end of the last step (its logging every 10 steps included; the
final evaluation and checkpoint excluded). Wall-clock and CPU-time rates are both reported: on a busy
machine the CPU-time rate (one thread) is the steadier comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from groundthink.data import RandomWindowSampler, load_data  # noqa: E402
from groundthink.models import GroundThinkLM  # noqa: E402
from groundthink.training import Trainer, TrainerHook  # noqa: E402
from groundthink.training.config import config_from_dict  # noqa: E402
from groundthink.training.optim import build_optimizer  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def make_config(args, steps: int):
    return config_from_dict({
        "model": {"key": args.model, "hidden_size": 128, "n_layers": 8, "rwkv_heads": 4, "mamba_head_dim": 64,
                  "mamba_state_size": 128},
        "data": {"source": args.data},
        "train": {"steps": steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "log_every": 10,
                  "eval_every": 10 ** 9, "eval_windows": 8, "progress": False, "tensorboard": False,
                  "device": "cpu", "warmup_ratio": 0.0},
    }).validate()


class Clock:
    """Wall and CPU time between two points; tokens/s by each (CPU time is steadier on a busy machine)."""

    def start(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, tokens: int) -> tuple[float, float]:
        return tokens / (time.perf_counter() - self.wall), tokens / (time.process_time() - self.cpu)


def bare_loop(args, config, data) -> tuple[float, float]:
    """(tokens/s, tokens per CPU-second) of the plain loop over the steps after the warmup steps."""
    torch.manual_seed(0)
    model = GroundThinkLM(config.model_config(data.tokenizer.vocab_size))
    optimizer = build_optimizer(model, config.train)
    sampler = RandomWindowSampler(data.train, args.batch_size, args.seq_len, seed=0)
    clock = Clock()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            clock.start()
        inputs, targets = sampler.next_batch()
        loss = model(inputs, targets=targets).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return clock.rates(args.steps * args.batch_size * args.seq_len)


class TimeSteps(TrainerHook):
    """Starts the clock after the warmup steps and reads it after the last step."""

    def __init__(self, warmup: int, tokens: int):
        self.warmup, self.tokens, self.clock, self.result = warmup, tokens, Clock(), None

    def on_step_end(self, trainer):
        if trainer.step == self.warmup:
            self.clock.start()
        elif trainer.step == trainer.config.train.steps:
            self.result = self.clock.rates(self.tokens)


def trainer_loop(args, config, data) -> tuple[float, float]:
    """The same for ``Trainer.fit`` (its logging included; its final eval and checkpoint excluded)."""
    timer = TimeSteps(args.warmup, args.steps * args.batch_size * args.seq_len)
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(config, run_dir, data=data, hooks=[timer]).fit()
    return timer.result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="GF-MH")
    parser.add_argument("--data", default=str(SHAKESPEARE) if SHAKESPEARE.is_file() else "recall")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = make_config(args, args.warmup + args.steps)
    data = load_data(config.data)
    bare, trained = [], []
    for repeat in range(args.repeats):
        bare.append(bare_loop(args, config, data))
        trained.append(trainer_loop(args, config, data))
        print(f"repeat {repeat + 1}: bare loop {bare[-1][0]:,.0f} tok/s ({bare[-1][1]:,.0f} per CPU-s), "
              f"trainer {trained[-1][0]:,.0f} tok/s ({trained[-1][1]:,.0f} per CPU-s)", flush=True)
    result = {"model": args.model, "data": data.name, "batch_size": args.batch_size, "seq_len": args.seq_len,
              "timed_steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "bare_tok_per_s": statistics.median(b[0] for b in bare),
              "trainer_tok_per_s": statistics.median(t[0] for t in trained),
              "bare_tok_per_cpu_s": statistics.median(b[1] for b in bare),
              "trainer_tok_per_cpu_s": statistics.median(t[1] for t in trained),
              "bare_all": bare, "trainer_all": trained, "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    result["trainer_vs_bare"] = result["trainer_tok_per_s"] / result["bare_tok_per_s"]
    result["trainer_vs_bare_cpu"] = result["trainer_tok_per_cpu_s"] / result["bare_tok_per_cpu_s"]
    print(f"median: bare loop {result['bare_tok_per_s']:,.0f} tok/s, trainer {result['trainer_tok_per_s']:,.0f} "
          f"tok/s ({result['trainer_vs_bare']:.1%} of the bare loop; by CPU time {result['trainer_vs_bare_cpu']:.1%}),"
          f" {result['threads']} threads")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
