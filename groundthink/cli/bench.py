"""``groundthink bench``: training speed of the hybrid against its baselines, side by side, in one table.

Each (shape, model, mode) builds the model, runs warm-up steps (autotuning, graph capture, compilation),
then times ``--steps`` full training steps (forward + backward + clipping + AdamW) three times and keeps
the median window. Ratios compare models within one shape and mode, measured in the same process.

    groundthink bench                                   # CUDA: the issue's shapes; CPU: a small shape
    groundthink bench --shapes char --device cpu        # CPU tok/s of the char config
    groundthink bench --mode eager,graph --json out.json
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

from groundthink.errors import UserError

# Training shapes. Model fields go to the registry as overrides; the rest shape the batch.
SHAPES: dict[str, dict] = {
    "char": dict(batch_size=32, seq_len=64, hidden_size=128, n_layers=8, vocab_size=65),
    "long": dict(batch_size=8, seq_len=4096, hidden_size=128, n_layers=8, vocab_size=65),
    # ~125M: GPT-2 small's width and depth, a 16K BPE vocabulary (the seeds'), head size 64 everywhere.
    "125m": dict(batch_size=8, seq_len=2048, hidden_size=768, n_layers=12, vocab_size=16384,
                 rwkv_heads=6, attn_heads=12),
    "cpu": dict(batch_size=4, seq_len=64, hidden_size=64, n_layers=2, vocab_size=65),
}
DEFAULT_SHAPES = {"cuda": ["char", "long", "125m"], "cpu": ["cpu"]}
DEFAULT_MODELS = ["GF-MH", "RWKV6", "MAMBA2", "GPT2"]
MODES = {
    "eager": dict(cuda_graph=False, compile=False),
    "graph": dict(cuda_graph=True, compile=False),       # the whole step as one CUDA graph
    "compile": dict(cuda_graph=True, compile=True),      # torch.compile around FLA's kernels, then the graph
}
DEFAULT_MODE = {"cuda": "graph", "cpu": "eager"}
BASELINE = "GPT2"


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time training steps of the hybrid and its baselines")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated registry keys")
    parser.add_argument("--shapes", default=None, help=f"comma-separated, from {', '.join(SHAPES)} "
                                                         "(default: char,long,125m on CUDA, cpu on CPU)")
    parser.add_argument("--mode", default=None, help="comma-separated, from eager, graph, compile "
                                                     "(default: graph on CUDA, eager on CPU)")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per window (default 20 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 6 CUDA, 1 CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="override every shape's batch size")
    parser.add_argument("--seq-len", type=int, default=None, help="override every shape's sequence length")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, for MFU")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from groundthink.models.registry import REGISTRY

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device not in ("cuda", "cpu"):
        raise UserError(f"--device {args.device!r} is unknown; use auto, cuda or cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu")
    models = _split(args.models)
    unknown = [m for m in models if m not in REGISTRY]
    if unknown or not models:
        raise UserError(f"--models: unknown {unknown or 'empty list'}; valid keys: {', '.join(REGISTRY)}")
    shapes = _split(args.shapes) if args.shapes else DEFAULT_SHAPES[device]
    if not shapes or any(s not in SHAPES for s in shapes):
        raise UserError(f"--shapes {args.shapes!r}: use a comma-separated list from {', '.join(SHAPES)}")
    modes = _split(args.mode) if args.mode else [DEFAULT_MODE[device]]
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--mode {args.mode!r}: use a comma-separated list from {', '.join(MODES)}")
    if device == "cpu" and any(MODES[m]["cuda_graph"] for m in modes):
        raise UserError("--mode graph/compile capture CUDA graphs; on CPU use --mode eager")
    steps = args.steps if args.steps is not None else (20 if device == "cuda" else 3)
    warmup = args.warmup if args.warmup is not None else (6 if device == "cuda" else 1)
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    for name in ("batch_size", "seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    env = environment(device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else env["peak_bf16_flops"]
    rows = []
    for shape_name in shapes:
        shape = dict(SHAPES[shape_name])
        shape.update({k: v for k, v in (("batch_size", args.batch_size), ("seq_len", args.seq_len)) if v})
        for mode in modes:
            for key in models:
                row = measure(key, shape, mode, device=device, steps=steps, warmup=warmup, peak=peak)
                row["shape"] = shape_name
                rows.append(row)
                print(f"  {shape_name:5s} {mode:7s} {key:7s} " + (f"{row['tok_per_s']:>12,.0f} tok/s"
                      if row.get("tok_per_s") else f"failed: {row.get('error')}"), file=sys.stderr, flush=True)
    add_ratios(rows)
    print(format_table(rows))
    from groundthink.ops.fla_hopper import HOPPER_CHECKS

    # Which chunked SSD kernel ran on Hopper + Triton < 3.7.1 (see ops/ssd.py): the self-checks' errors.
    env["ssd_hopper_self_checks"] = {" ".join(map(str, key)): errors for key, errors in HOPPER_CHECKS.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(["groundthink"] + sys.argv[1:]),
                       "steps": steps, "warmup": warmup, "rows": rows}, f, indent=2)
    return 0


def measure(key: str, shape: dict, mode: str, *, device: str, steps: int, warmup: int,
            peak: float | None, windows: int = 3) -> dict:
    """Build ``key`` at ``shape``, train it for ``warmup + windows * steps`` steps; one result row."""
    import torch

    from groundthink.models.registry import get_model
    from groundthink.training.cuda_graph import TrainStep, make_adamw
    from groundthink.training.flops import training_flops_per_step

    batch, seq = shape["batch_size"], shape["seq_len"]
    overrides = {k: v for k, v in shape.items() if k not in ("batch_size", "seq_len")}
    row = dict(model=key, mode=mode, batch_size=batch, seq_len=seq, **overrides)
    model = optimizer = step = data = None
    try:
        _release(device)
        torch.manual_seed(0)
        model = get_model(key, max_position_embeddings=seq, **overrides).to(device)
        optimizer = make_adamw(model.parameters(), lr=3e-4, device=device)
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
    import torch

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
    import torch

    from groundthink.training.flops import peak_flops

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
    env["fla_autotune"] = os.environ.get("GROUNDTHINK_FLA_AUTOTUNE") or "full"
    env["fused_ops"] = os.environ.get("GROUNDTHINK_FUSED_OPS") != "0"
    from groundthink.ops.backend import fused_recurrent_max_len

    env["fused_recurrent_max_len"] = fused_recurrent_max_len()
    return env


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _release(device: str) -> None:
    import torch

    if "torch._dynamo" in sys.modules:  # compiled code holds on to the last model's tensors
        torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
