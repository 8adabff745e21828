"""Time and check the CUDA scan kernels one by one, at the layer shapes of `groundthink bench`.

    PYTHONPATH=. python benchmarks/scan_bench.py --shapes char,long,125m --json scans.json

For each shape, the RWKV-6 scan (FLA's fused recurrent and chunked kernels) and Mamba-2's SSD (FLA's fused
recurrent, ``chunk_simple_gla`` — with the Hopper guard lifted where FLA raises — and ``chunk_gla``) run
forward + backward on bf16 inputs (float32 decays), as under the trainer's autocast. Each row gives the
median ms of ``--reps`` timed calls and the relative L2 error of the output and every input gradient
against the float64 PyTorch scan on one sequence of the same shape. This is what picks
``GROUNDTHINK_FUSED_RECURRENT_MAX_LEN`` and tells whether the chunked SSD may run on Hopper.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from groundthink.experiments.speed import SHAPES, environment
from groundthink.models.config import ModelConfig
from groundthink.ops.fla_hopper import chunk_simple_gla_hopper, gated_chunk_backward_guarded, hopper_chunk_errors
from groundthink.ops.rwkv6 import rwkv6_chunk_torch
from groundthink.ops.ssd import ssd_chunk_torch


def scan_dims(shape: dict) -> dict:
    """The scans' head layout of a GF-MH model at ``shape`` (as the layers compute it)."""
    config = ModelConfig(**{k: v for k, v in shape.items() if k not in ("batch_size", "seq_len")})
    hidden = config.hidden_size
    mamba_heads = config.mamba_expand * hidden // config.mamba_head_dim
    return dict(batch=shape["batch_size"], seq=shape["seq_len"],
                rwkv6=dict(H=config.rwkv_heads, K=round(hidden * config.rwkv_expand_k) // config.rwkv_heads,
                          V=round(hidden * config.rwkv_expand_v) // config.rwkv_heads),
                ssd=dict(H=mamba_heads, P=config.mamba_head_dim, N=config.mamba_state_size))


def rwkv6_inputs(batch, seq, H, K, V, generator):
    def rand(*size):
        return torch.randn(*size, generator=generator, device="cuda")
    r, k = rand(batch, seq, H, K) * K ** -0.5, rand(batch, seq, H, K) * K ** -0.5
    v = rand(batch, seq, H, V)
    w = -torch.exp(rand(batch, seq, H, K) * 0.5 - 1.0)                 # log decay, as the layer makes it
    u = rand(H, K) * 0.1
    return [r, k, v, w, u]


def ssd_inputs(batch, seq, H, P, N, generator):
    def rand(*size):
        return torch.randn(*size, generator=generator, device="cuda")
    x = rand(batch, seq, H, P)
    dt = torch.nn.functional.softplus(rand(batch, seq, H) - 3.0)
    A = -torch.exp(rand(H) * 0.5 + 1.0)
    B, C = rand(batch, seq, H, N) * N ** -0.5, rand(batch, seq, H, N) * N ** -0.5
    return [x, dt, A, B, C]


def rwkv6_variants():
    from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

    def call(kernel):
        def run(r, k, v, w, u):
            return kernel(r=r.bfloat16(), k=k.bfloat16(), v=v.bfloat16(), w=w, u=u, scale=1.0)[0]
        return run
    return {"fused_recurrent_rwkv6": call(fused_recurrent_rwkv6), "chunk_rwkv6": call(chunk_rwkv6)}


def ssd_variants():
    from fla.ops.gla import chunk_gla
    from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

    def prepare(x, dt, A, B, C):  # the SSD as gated linear attention, as ops/ssd.py does it
        return dict(q=C.bfloat16(), k=B.bfloat16(), v=(x * dt[..., None]).bfloat16(), scale=1.0,
                    state_v_first=True), dt * A

    def fused(*inputs):
        kw, g = prepare(*inputs)
        return fused_recurrent_simple_gla(g=g, **kw)[0]

    def simple(*inputs):
        kw, g = prepare(*inputs)
        if gated_chunk_backward_guarded():
            return chunk_simple_gla_hopper(g=g, initial_state=None, output_final_state=False, **kw)[0]
        return chunk_simple_gla(g=g, **kw)[0]

    def gla(*inputs):
        kw, g = prepare(*inputs)
        return chunk_gla(g=g.unsqueeze(-1).expand(*kw["k"].shape).contiguous(), **kw)[0]
    return {"fused_recurrent_simple_gla": fused, "chunk_simple_gla": simple, "chunk_gla": gla}


def reference(op: str, inputs):
    if op == "rwkv6":
        return rwkv6_chunk_torch(*inputs)[0]
    return ssd_chunk_torch(*inputs)[0]


def errors_vs_float64(op: str, run, inputs) -> dict[str, float]:
    """Relative L2 error of the output and each input gradient against the float64 PyTorch scan."""
    grad_out = None
    results = []
    for fn, dtype in ((run, torch.float32), (lambda *t: reference(op, t), torch.float64)):
        leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
        out = fn(*leaves)
        if grad_out is None:
            grad_out = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        out.backward(grad_out.to(out.dtype))
        results.append([out.detach()] + [t.grad for t in leaves])
    names = ["out"] + [f"d{i}" for i in range(len(inputs))]
    return {name: float((a.double() - b).norm() / b.norm().clamp_min(1e-30))
            for name, a, b in zip(names, *results)}


def time_fwd_bwd(run, inputs, reps: int, warmup: int = 3) -> float:
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = run(*leaves)
    grad_out = torch.randn_like(out)
    times = []
    for i in range(warmup + reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(*leaves).backward(grad_out)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="char,long,125m")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the scan kernels are FLA's Triton kernels: run this on a CUDA machine")

    rows = []
    for shape_name in args.shapes.split(","):
        dims = scan_dims(SHAPES[shape_name])
        for op, variants, make in (("rwkv6", rwkv6_variants(), rwkv6_inputs), ("ssd", ssd_variants(), ssd_inputs)):
            head = dims[op]
            timing_inputs = make(dims["batch"], dims["seq"], *head.values(), torch.Generator("cuda").manual_seed(0))
            check_inputs = make(1, dims["seq"], *head.values(), torch.Generator("cuda").manual_seed(2))
            for name, run in variants.items():
                row = dict(shape=shape_name, op=op, kernel=name, batch=dims["batch"], seq=dims["seq"], **head)
                try:
                    row["ms_fwd_bwd"] = round(time_fwd_bwd(run, timing_inputs, args.reps), 4)
                    row["rel_err_vs_float64"] = {k: float(f"{v:.3g}") for k, v in
                                                 errors_vs_float64(op, run, check_inputs).items()}
                except Exception as err:  # one kernel failing must not lose the other rows
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    checks = {}
    if gated_chunk_backward_guarded():
        for shape_name in args.shapes.split(","):
            ssd_dims = scan_dims(SHAPES[shape_name])["ssd"]
            checks[f"N{ssd_dims['N']}_P{ssd_dims['P']}_bf16"] = hopper_chunk_errors(
                ssd_dims["N"], ssd_dims["P"], torch.bfloat16, "cuda")
        print("hopper self-check (guard-lifted chunk_simple_gla vs chunk_gla):", json.dumps(checks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=environment("cuda"), command=" ".join(sys.argv), rows=rows,
                           hopper_chunk_simple_gla_checks=checks,
                           fla_gated_chunk_backward_guarded=gated_chunk_backward_guarded()), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
