"""``groundthink sweep SPEC --estimate N``: how long would the sweep take on this machine, one run at a time?

For each row of the matrix (model x variant) it builds the model and optimizer of the run's config, times
N training steps (after one untimed warm-up step) and N evaluation forwards on random tokens, and scales:
per run ``steps x step time + evaluations x forwards per evaluation x forward time`` (evaluation windows,
the balance forward and the end-of-run ablation's three passes). An estimate: data loading, checkpoints,
start-up and kernel autotuning are left out, and so is any speed-up from running several runs at once.
"""
from __future__ import annotations

import math
import time

import torch

from groundthink.data.sources import load_corpus
from groundthink.devices import resolve_device
from groundthink.experiments.spec import build_config
from groundthink.models.model import GroundThinkLM
from groundthink.training.optim import build_optimizer
from groundthink.training.precision import autocast_for


def timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), synchronizing CUDA around the timed calls."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def vocab_of(config) -> int:
    """The tokenizer's size without training one: distinct characters of the text, or data.vocab_size (BPE)."""
    if config.data.tokenizer != "char":
        return config.data.vocab_size

    corpus = load_corpus(config.data)
    return len(set(corpus.train_text) | set(corpus.val_text or ""))


def estimate_row(config, repeats: int) -> dict:
    tc = config.train
    device = resolve_device(tc.device, "train.device")
    autocast = autocast_for(device, tc.precision)
    torch.manual_seed(0)
    model = GroundThinkLM(config.model_config(vocab_of(config))).to(device)
    optimizer = build_optimizer(model, tc)
    tokens = torch.randint(0, model.config.vocab_size, (tc.batch_size, tc.seq_len + 1), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model(tokens[:, :-1], targets=tokens[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or math.inf)
        optimizer.step()

    @torch.no_grad()
    def forward():
        with autocast():
            model(tokens[:, :-1], targets=tokens[:, 1:])

    step_s = timed(step, repeats, device)
    model.eval()
    forward_s = timed(forward, repeats, device)
    evaluations = tc.steps // tc.eval_every + (tc.steps % tc.eval_every != 0)
    forwards_per_eval = math.ceil(tc.eval_windows / tc.batch_size) + 1       # val loss + balance pass
    end_forwards = 3 * math.ceil(tc.eval_windows / tc.batch_size)           # ablation: as is, -rwkv, -mamba
    run_s = tc.steps * step_s + (evaluations * forwards_per_eval + end_forwards) * forward_s
    return {"params": model.num_params, "step_s": step_s, "forward_s": forward_s, "run_s": run_s,
            "device": str(device)}


def estimate(spec, repeats: int = 3, log=print) -> float:
    """Print the per-row estimate and return the total seconds for the spec's runs, one at a time."""
    total = 0.0
    log(f"estimate for sweep {spec.name}: {repeats} timed steps per row on this machine, runs one at a time")
    log(f"{'row':<28} {'params':>10} {'s/step':>8} {'s/fwd':>8} {'min/run':>8} {'runs':>5}")
    for label in spec.labels:
        runs = [run for run in spec.runs if run.label == label]
        row = estimate_row(build_config(runs[0].config, spec.data_root), repeats)
        total += row["run_s"] * len(runs)
        log(f"{label:<28} {row['params']:>10,} {row['step_s']:>8.3f} {row['forward_s']:>8.3f} "
            f"{row['run_s'] / 60:>8.1f} {len(runs):>5}")
    log(f"total: {total / 3600:.2f} h for {len(spec.runs)} runs on {row['device']} (an estimate: no data loading, "
        f"checkpoints, start-up or autotuning; --parallel not modelled)")
    return total
