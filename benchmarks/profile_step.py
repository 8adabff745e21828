"""Where a training step's time goes: torch.profiler over a few steps, kernels grouped by family.

    PYTHONPATH=. python benchmarks/profile_step.py --model GF-MH --shape char --mode graph --out prof.txt

Prints (and writes) the wall time per step, the number of GPU kernels per step, the GPU-busy time, the time
per kernel family (FLA scans, matmuls, PyTorch elementwise, Inductor, ...) and the top kernels.
``--by-site N`` (eager mode: a captured graph replays kernels no op launched) adds the N (module, op) pairs
that cost most GPU time, backward ops charged to the module whose forward op they differentiate.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from groundthink.experiments.speed import MODES, SHAPES
from groundthink.models.registry import get_model
from groundthink.training.optim import make_adamw
from groundthink.training.step import TrainStep

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


SITE = "module: "  # record_function label that annotate_modules puts around every module's forward
BACKWARD = "autograd::engine::evaluate_function: "


def annotate_modules(model: torch.nn.Module) -> list:
    """Wrap every submodule's forward in a profiler range ``module: ClassName`` (returns the hook handles).

    Ranges, not ``with_stack``: Python frames did not become the ops' parents in the GPU profiles (torch 2.11).
    """
    handles = []
    for module in model.modules():
        label = SITE + type(module).__name__

        def enter(mod, args, label=label):
            mod._profile_ranges = [*getattr(mod, "_profile_ranges", []), torch.profiler.record_function(label)]
            mod._profile_ranges[-1].__enter__()

        def leave(mod, args, out):
            mod._profile_ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def model_site(event) -> str:
    """The innermost module whose forward ran a profiled op (``annotate_modules``), or "?"."""
    while event is not None:
        if event.name.startswith(SITE):
            return event.name[len(SITE):]
        event = event.cpu_parent
    return "?"


def time_by_site(events, use_device: bool = True) -> dict[tuple[str, str], list]:
    """Self time (us) and count of every ATen op, keyed by (module, op).

    A forward op is charged to the innermost module that ran it (``annotate_modules``); a backward op to the
    module whose forward op created its autograd node (the profiler gives both the same sequence number), labelled
    ``NodeBackward0 > aten::op``. Self times, so nested ops are not counted twice.
    """
    forward_site: dict[int, str] = {}
    for e in events:
        if e.name.startswith("aten::") and e.sequence_nr >= 0 and e.sequence_nr not in forward_site:
            site = model_site(e)
            if site != "?":
                forward_site[e.sequence_nr] = site
    table = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        us = e.self_device_time_total if use_device else e.self_cpu_time_total
        if not e.name.startswith("aten::") or us <= 0:
            continue
        node = e.cpu_parent
        while node is not None and not node.name.startswith(BACKWARD):
            node = node.cpu_parent
        if node is None:
            key = (model_site(e), e.name)
        else:
            key = (forward_site.get(node.sequence_nr, "?"), f"{node.name[len(BACKWARD):]} > {e.name}")
        table[key][0] += 1
        table[key][1] += us
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="GF-MH")
    parser.add_argument("--shape", default="char", choices=list(SHAPES))
    parser.add_argument("--mode", default="graph", choices=list(MODES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by-site", type=int, default=0, metavar="N",
                        help="also list the N costliest (module, op) pairs (needs --mode eager)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.by_site and args.mode != "eager":
        parser.error(f"--by-site needs --mode eager (mode {args.mode} replays kernels that no op launches)")

    shape = dict(SHAPES[args.shape])
    batch, seq = shape.pop("batch_size"), shape.pop("seq_len")
    torch.manual_seed(0)
    model = get_model(args.model, max_position_embeddings=seq, **shape).cuda()
    if args.by_site:
        annotate_modules(model)
    step = TrainStep(model, make_adamw(model.parameters(), lr=3e-4, capturable=MODES[args.mode]["cuda_graph"]), batch, seq, **MODES[args.mode])
    data = torch.randint(0, shape["vocab_size"], (batch, seq + 1), device="cuda")
    inputs, targets = data[:, :-1], data[:, 1:]
    for _ in range(6):
        step(inputs, targets)
    torch.cuda.synchronize()

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], ) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            step(inputs, targets)
        end.record()
        torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / args.steps

    # GPU events are kernels and copies, plus one per profiler range (annotate_modules) that spans them.
    kernels = [e for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(SITE)]
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
        share = 100 * us / max(busy_us * args.steps, 1e-9)
        lines.append(f"{name:40s} {count / args.steps:12.0f} {us / args.steps / 1e3:12.3f} {share:5.1f}%")
    lines += ["", f"top {args.top} kernels by GPU time", f"{'kernel':90s} {'calls/step':>10s} {'us/step':>10s}"]
    for name, (count, us) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:args.top]:
        lines.append(f"{name[:90]:90s} {count / args.steps:10.1f} {us / args.steps:10.1f}")
    if args.by_site:
        sites = time_by_site(prof.events())
        lines += ["", f"top {args.by_site} (module, op) by GPU time",
                  f"{'module':24s} {'op':60s} {'calls/step':>10s} {'us/step':>10s}"]
        for (site, op), (count, us) in sorted(sites.items(), key=lambda kv: -kv[1][1])[:args.by_site]:
            lines.append(f"{site[:24]:24s} {op[:60]:60s} {count / args.steps:10.1f} {us / args.steps:10.1f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
