"""Where a training step's time goes: torch.profiler over a few steps, kernels grouped by family.

    PYTHONPATH=. python benchmarks/profile_step.py --model GF-MH --shape char --mode graph --out prof.txt

Prints (and writes) the wall time per step, the number of GPU kernels per step, the GPU-busy time, the time
per kernel family (FLA scans, matmuls, PyTorch elementwise, Inductor, ...) and the top kernels.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from groundthink.cli.bench import MODES, SHAPES
from groundthink.models.registry import get_model
from groundthink.training.cuda_graph import TrainStep, make_adamw

# Kernel name pattern -> family (first match wins).
FAMILIES = [
    (r"rwkv6", "FLA RWKV-6 scan"),
    # Mamba-2's SSD: FLA's generic fused recurrent kernels (T <= 64) or chunk_gla / chunk_simple_gla.
    (r"^fused_recurrent_(fwd|bwd)_kernel|chunk_|simple_gla|gla|fwd_h|bwd_dh|bwd_dqkw|fwd_o|local_cumsum",
     "FLA SSD scan"),
    (r"causal_conv1d|token_shift|layer_norm|group_norm|rms_norm|norm_fwd|norm_bwd", "FLA norms / conv / shift"),
    (r"flash|fmha|attention", "attention (SDPA)"),
    (r"gemm|sm90_xmma|cutlass|ampere_|sm80_|nvjet|cublas|gemv|splitK", "matmul (cuBLAS)"),
    (r"^triton_", "Inductor (torch.compile)"),
    (r"adam|multi_tensor|foreach|norm_kernel|lpnorm", "optimizer / grad clip"),
    (r"elementwise|vectorized|unrolled|reduce|CatArray|copy|fill|index|embedding|softmax|cross_entropy|nll",
     "PyTorch elementwise / reductions"),
]


def family(name: str) -> str:
    for pattern, label in FAMILIES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return label
    return "other"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="GF-MH")
    parser.add_argument("--shape", default="char", choices=list(SHAPES))
    parser.add_argument("--mode", default="graph", choices=list(MODES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    shape = dict(SHAPES[args.shape])
    batch, seq = shape.pop("batch_size"), shape.pop("seq_len")
    torch.manual_seed(0)
    model = get_model(args.model, max_position_embeddings=seq, **shape).cuda()
    step = TrainStep(model, make_adamw(model.parameters(), lr=3e-4, device="cuda"), batch, seq, **MODES[args.mode])
    data = torch.randint(0, shape["vocab_size"], (batch, seq + 1), device="cuda")
    inputs, targets = data[:, :-1], data[:, 1:]
    for _ in range(6):
        step(inputs, targets)
    torch.cuda.synchronize()

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            step(inputs, targets)
        end.record()
        torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / args.steps

    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels) / args.steps
    by_family = collections.defaultdict(lambda: [0, 0.0])
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        for table, key in ((by_family, family(e.name)), (by_name, e.name)):
            table[key][0] += 1
            table[key][1] += e.time_range.elapsed_us()
    lines = [f"{args.model} {args.shape} (batch {batch}, seq {seq}) mode={args.mode} on {torch.cuda.get_device_name()}",
             f"step {wall_ms:.3f} ms (events, profiler on); GPU kernels per step {len(kernels) / args.steps:.0f}; "
             f"GPU busy {busy_us / 1e3:.3f} ms per step ({100 * busy_us / 1e3 / wall_ms:.0f}% of the step)", "",
             f"{'family':40s} {'kernels/step':>12s} {'GPU ms/step':>12s} {'share':>6s}"]
    for name, (count, us) in sorted(by_family.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{name:40s} {count / args.steps:12.0f} {us / args.steps / 1e3:12.3f} {100 * us / max(busy_us * args.steps, 1e-9):5.1f}%")
    lines += ["", f"top {args.top} kernels by GPU time", f"{'kernel':90s} {'calls/step':>10s} {'us/step':>10s}"]
    for name, (count, us) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:args.top]:
        lines.append(f"{name[:90]:90s} {count / args.steps:10.1f} {us / args.steps:10.1f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
