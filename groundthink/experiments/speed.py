"""Training speed, measured side by side: the harness behind ``groundthink bench`` and benchmarks/*.py.

Each (shape, model, mode) builds the model, runs warm-up steps (autotuning, graph capture, compilation),
then times ``steps`` full training steps (forward + backward + clipping + AdamW) over several windows and
keeps the median window. Ratios compare models within one shape and mode, measured in the same process.
"""
from __future__ import annotations

import gc
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from groundthink.models.registry import get_model
from groundthink.ops import backend
from groundthink.training.flops import peak_flops, training_flops_per_step
from groundthink.training.optim import make_adamw
from groundthink.training.step import TrainStep

# Training shapes. Model fields go to the registry as overrides; the rest shape the batch.
SHAPES: dict[str, dict] = {
    "char": dict(batch_size=32, seq_len=64, hidden_size=128, n_layers=8, vocab_size=65),
    "long": dict(batch_size=8, seq_len=4096, hidden_size=128, n_layers=8, vocab_size=65),
    # ~125M: GPT-2 small's width and depth, a 16K BPE vocabulary (the seed design's), head size 64 everywhere.
    "125m": dict(batch_size=8, seq_len=2048, hidden_size=768, n_layers=12, vocab_size=16384,
                 rwkv_heads=6, attn_heads=12),
    "cpu": dict(batch_size=4, seq_len=64, hidden_size=64, n_layers=2, vocab_size=65),
}
DEFAULT_SHAPES = {"cuda": ["char", "long", "125m"], "cpu": ["cpu"]}
MODES = {
    "eager": dict(cuda_graph=False, compile=False),
    "graph": dict(cuda_graph=True, compile=False),       # the whole step as one CUDA graph
    "compile": dict(cuda_graph=True, compile=True),      # torch.compile around FLA's kernels, then the graph
}
DEFAULT_MODE = {"cuda": "graph", "cpu": "eager"}
BASELINE = "GPT2"


def measure(key: str, shape: dict, mode: str, *, device: str, steps: int, warmup: int,
            peak: float | None, windows: int = 3) -> dict:
    """Build ``key`` at ``shape``, train it for ``warmup + windows * steps`` steps; one result row."""
    batch, seq = shape["batch_size"], shape["seq_len"]
    overrides = {k: v for k, v in shape.items() if k not in ("batch_size", "seq_len")}
    row = dict(model=key, mode=mode, batch_size=batch, seq_len=seq, **overrides)
    model = optimizer = step = data = None
    try:
        _release(device)
        torch.manual_seed(0)
        model = get_model(key, max_position_embeddings=seq, **overrides).to(device)
        optimizer = make_adamw(model.parameters(), lr=3e-4, capturable=MODES[mode]["cuda_graph"])
        step = TrainStep(model, optimizer, batch, seq, **MODES[mode])
        data = torch.randint(0, overrides["vocab_size"], (4, batch, seq + 1), device=device)
        batches = [(d[:, :-1], d[:, 1:]) for d in data]

        started = time.perf_counter()
        for i in range(warmup):
            out = step(*batches[i % len(batches)])
        _sync(device)
        row["setup_s"] = round(time.perf_counter() - started, 2)
        per_step = []
        for _ in range(windows):
            per_step.append(_timed(lambda i: step(*batches[i % len(batches)]), steps, device) / steps)
        out = step(*batches[0])
        loss = float(out.loss)
        ms = statistics.median(per_step) * 1e3
        flops = training_flops_per_step(model, batch, seq)
        row.update(
            params=sum(p.numel() for p in model.parameters()),
            ms_per_step=round(ms, 4), tok_per_s=round(batch * seq / ms * 1e3, 3),
            ms_windows=[round(t * 1e3, 4) for t in per_step],
            tflops=round(flops / ms / 1e9, 2), mfu=round(flops / (ms / 1e3) / peak, 4) if peak else None,
            flops_per_step=flops, loss=round(loss, 4), finite=bool(torch.isfinite(out.loss)),
            peak_mem_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
        )
    except torch.cuda.OutOfMemoryError as err:
        row["error"] = "OOM: " + str(err).split("\n")[0][:160]
    except Exception as err:  # one failing row must not lose the others' results
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    finally:
        del model, optimizer, step, data
        _release(device)
    return row


def _timed(run_step, steps: int, device: str) -> float:
    """Seconds for ``steps`` calls: CUDA events on a GPU (queued work included), a wall clock on CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            run_step(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    started = time.perf_counter()
    for i in range(steps):
        run_step(i)
    return time.perf_counter() - started


def add_ratios(rows: list[dict]) -> None:
    """``vs_gpt``: tok/s over the GPT baseline's in the same shape and mode (None without one)."""
    base = {(r["shape"], r["mode"]): r.get("tok_per_s") for r in rows if r["model"] == BASELINE}
    for r in rows:
        ref = base.get((r["shape"], r["mode"]))
        r["vs_gpt"] = round(r["tok_per_s"] / ref, 3) if ref and r.get("tok_per_s") else None


def format_table(rows: list[dict]) -> str:
    header = ("shape", "model", "mode", "tok/s", "ms/step", "peak MB", "TFLOP/s", "MFU", "vs GPT2")
    lines = [header]
    for r in rows:
        if r.get("error"):
            lines.append((r["shape"], r["model"], r["mode"], r["error"][:60], "", "", "", "", ""))
            continue
        lines.append((
            r["shape"], r["model"], r["mode"], f"{r['tok_per_s']:,.0f}", f"{r['ms_per_step']:.2f}",
            "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:,.0f}", f"{r['tflops']:.2f}",
            "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
            "-" if r["vs_gpt"] is None else f"{r['vs_gpt']:.2f}x"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def environment(device: str) -> dict:
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device,
           "python": platform.python_version(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    for name in ("triton", "fla"):
        try:
            env[name] = __import__(name).__version__
        except Exception:
            env[name] = None
    env["device_name"] = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    env["cuda"] = torch.version.cuda if device == "cuda" else None
    env["peak_bf16_flops"] = peak_flops(env["device_name"]) if device == "cuda" else None
    # The switches that change what is measured (see groundthink/ops/backend.py).
    env.update(backend.switches())
    return env


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _release(device: str) -> None:
    if "torch._dynamo" in sys.modules:  # compiled code holds on to the last model's tensors
        torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
