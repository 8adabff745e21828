"""``groundthink bench``: training speed of the hybrid against its baselines, side by side, in one table
(the harness is ``groundthink/experiments/speed.py``).

    groundthink bench                                   # CUDA: the issue's shapes; CPU: a small shape
    groundthink bench --shapes char --device cpu        # CPU tok/s of the char config
    groundthink bench --mode eager,graph --json out.json
"""
from __future__ import annotations

import json
import sys

from groundthink.errors import UserError

# Subcommand modules import the package lazily: `groundthink --help` must not load torch.
DEFAULT_MODELS = "GF-MH,RWKV6,MAMBA2,GPT2"

def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time training steps of the hybrid and its baselines")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated registry keys")
    parser.add_argument("--shapes", default=None, help="comma-separated, from char, long, 125m, cpu "
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

    from groundthink.data.files import check_output_file
    from groundthink.experiments.speed import (DEFAULT_MODE, DEFAULT_SHAPES, MODES, SHAPES, add_ratios, environment,
                                               format_table, measure)
    from groundthink.models.registry import REGISTRY
    from groundthink.ops.fla_hopper import HOPPER_CHECKS
    from groundthink.progress import Progress

    if args.json:
        check_output_file(args.json, "--json")
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
    # One unit per measurement (the ETA counts rows: a ~125M row costs more than a char one, so it is rough).
    with Progress(len(shapes) * len(modes) * len(models), "bench", unit="rows") as progress:
        for shape_name in shapes:
            shape = dict(SHAPES[shape_name])
            shape.update({k: v for k, v in (("batch_size", args.batch_size), ("seq_len", args.seq_len)) if v})
            for mode in modes:
                for key in models:
                    progress.set_postfix(f"{shape_name} {mode} {key}")
                    row = measure(key, shape, mode, device=device, steps=steps, warmup=warmup, peak=peak)
                    row["shape"] = shape_name
                    rows.append(row)
                    progress.write(f"  {shape_name:5s} {mode:7s} {key:7s} " + (f"{row['tok_per_s']:>12,.0f} tok/s"
                                   if row.get("tok_per_s") else f"failed: {row.get('error')}"), file=sys.stderr)
                    progress.update(1)
    add_ratios(rows)
    print(format_table(rows))
    # Which chunked SSD kernel ran on Hopper + Triton < 3.7.1 (see ops/ssd.py): the self-checks' errors.
    env["ssd_hopper_self_checks"] = {" ".join(map(str, key)): errors for key, errors in HOPPER_CHECKS.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": " ".join(["groundthink"] + sys.argv[1:]),
                       "steps": steps, "warmup": warmup, "rows": rows}, f, indent=2)
    return 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
