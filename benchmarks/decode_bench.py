"""Batch-1 decoding: tokens/s and memory against context length, recurrent hybrid vs GPT with a KV cache.

For each model and context length: prefill a random context, then decode ``--new-tokens`` greedy tokens one
at a time, and record prefill time, decode tokens/s, the size of the carried state (recurrent state or KV
cache) after prefill and at the end and, on CUDA, the peak memory of prefill and of decoding. Recurrent
models are measured in each of ``--modes``: ``eager``, ``graph`` (CUDA graph of the step) and ``compile``
(torch.compile + CUDA graph); the graph modes need CUDA and are skipped on CPU. The GPT baseline always decodes eagerly (its KV cache
grows, so its step cannot be one fixed graph).

    python benchmarks/decode_bench.py --json decode.json                 # GPU: contexts 1K, 8K, 64K
    python benchmarks/decode_bench.py --small --json decode_cpu.json     # CPU: short contexts, few tokens

``--count-ops`` measures no time: it counts what one decode step runs (the step a CUDA graph captures,
sampling included), a proxy for kernel launches that any machine can rerun: the ATen ops of the eager
step, and with ``--count-compiled`` the kernels and library calls inductor emits for it in each compile
mode (on CPU: C++ kernels instead of Triton ones, but the same fusion decisions about the step's ops).

    python benchmarks/decode_bench.py --count-ops --count-compiled --device cpu

A case that fails (out of memory, a capture error) is recorded with its error and the run goes on. In graph
modes, the first steps are checked against eager decoding from the same state (``max_abs_diff_vs_eager``).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from groundthink.inference.cuda_graph import DecodeStep  # noqa: E402
from groundthink.inference.generate import Decoder, decode_tokens, has_attention, make_generator  # noqa: E402
from groundthink.inference.op_count import count_ops  # noqa: E402
from groundthink.inference.sampling import Sampler  # noqa: E402
from groundthink.inference.states import map_states  # noqa: E402
from groundthink.models import get_model  # noqa: E402

CHECK_STEPS = 4
# mode -> (CUDA graph, compile mode)
MODES = {"eager": (False, None), "graph": (True, None), "compile": (True, "default"),
         "compile-gemv": (True, "gemv"), "compile-max": (True, "max-autotune")}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["GF-MH", "GPT2"])
    parser.add_argument("--contexts", nargs="+", type=int, default=None,
                        help="context lengths (default 1024 8192 65536; with --small 128 512 2048)")
    parser.add_argument("--new-tokens", type=int, default=None, help="decoded tokens (default 512; --small 32)")
    parser.add_argument("--warmup", type=int, default=8, help="decode steps before timing")
    parser.add_argument("--modes", nargs="+", default=["eager", "graph", "compile"], choices=list(MODES),
                        help="eager; graph (CUDA graph); compile / compile-gemv / compile-max (torch.compile in "
                             "the modes default / gemv / max-autotune, see groundthink/inference/compile.py, "
                             "then a CUDA graph)")
    parser.add_argument("--sample", action="store_true",
                        help="decode with temperature 0.8, top-k 50, top-p 0.95, seed 0 (as `groundthink "
                             "generate` does) instead of greedy")
    parser.add_argument("--count-ops", action="store_true", help="count the ops of one decode step, time nothing")
    parser.add_argument("--count-compiled", action="store_true",
                        help="with --count-ops: also the kernels inductor emits per compile mode (slow on CPU)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=65)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--small", action="store_true", help="CPU-sized run: short contexts, few tokens")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: batch-1 decoding is latency-bound, and extra OpenMP "
                             "threads only add synchronization, badly so on a shared machine)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.contexts = args.contexts or ([128, 512, 2048] if args.small else [1024, 8192, 65536])
    args.new_tokens = args.new_tokens or (32 if args.small else 512)
    return args


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def build(key, context, args, device, dtype):
    torch.manual_seed(0)
    settings = dict(vocab_size=args.vocab_size, hidden_size=args.hidden_size, n_layers=args.n_layers)
    if key.upper() == "GPT2":  # learned positions must cover the context and every decoded token
        settings["max_position_embeddings"] = context + args.warmup + args.new_tokens + CHECK_STEPS + 1
    return get_model(key, **settings).to(device=device, dtype=dtype).eval()


def make_sampler(args, device, seed=0) -> Sampler:
    if args.sample:
        return Sampler(0.8, 50, 0.95, make_generator(seed, device))
    return Sampler(0.0)


def run_case(key, context, mode, args, device, dtype) -> dict:
    record = {"model": key, "context": context, "mode": mode, "sampling": "top-k/top-p" if args.sample else "greedy"}
    model = build(key, context, args, device, dtype)
    record["params"] = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, args.vocab_size, (1, context), generator=torch.Generator().manual_seed(0)).to(device)
    graph, compile_mode = MODES[mode]
    sampler = make_sampler(args, device)
    decoder = Decoder(model, cuda_graph=graph, compile=compile_mode or False, sampler=sampler)

    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    logits = decoder.prefill(ids)
    sync(device)
    record["prefill_s"] = time.perf_counter() - start
    record["prefill_peak_bytes"] = peak_bytes(device)
    record["state_bytes_after_prefill"] = decoder.state_nbytes()

    token = logits.argmax(-1)
    if mode != "eager":  # the same steps eagerly, from a copy of the same state: graph replay must agree
        eager = Decoder(model, sampler=make_sampler(args, device, seed=1))
        eager.states, eager.position = map_states(torch.clone, decoder.states), decoder.position
        diff, check_token = 0.0, token
        for _ in range(CHECK_STEPS):
            fast = decoder.step(check_token).clone()
            reference = eager.step(check_token)
            diff = max(diff, (fast.float() - reference.float()).abs().max().item())
            check_token = reference.argmax(-1)
        record["max_abs_diff_vs_eager"] = diff
        record["graph_error"] = decoder.graph_error
        if args.sample and decoder.graph is not None:  # same seed: the graph must draw the tokens eager draws
            sampler.generator.manual_seed(1)
            eager.states = map_states(torch.clone, decoder.current_states())
            fast_token = reference_token = check_token
            same = True
            for _ in range(CHECK_STEPS):
                fast_token = decoder.sample_step(fast_token).clone()
                reference_token = eager.sample_step(reference_token)
                same = same and torch.equal(fast_token, reference_token)
            record["sampled_tokens_equal_eager"] = same
        del eager

    # Timed: exactly the loop of `groundthink generate` / stream_text (decode_tokens with host=True: one
    # sampled token per step, read back to the host) after `--warmup` tokens (capture / compilation).
    reset_peak(device)
    setup = time.perf_counter()
    for i, tok in enumerate(decode_tokens(decoder, token, args.warmup + args.new_tokens + 1, host=True)):
        int(tok[0])
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
            record["warmup_s"] = start - setup
    sync(device)
    elapsed = time.perf_counter() - start
    record["decode_tok_s"] = args.new_tokens / elapsed
    record["decode_ms_per_token"] = 1000 * elapsed / args.new_tokens
    record["decode_peak_bytes"] = peak_bytes(device)
    record["state_bytes_at_end"] = decoder.state_nbytes()
    record["cuda_graph"] = decoder.graph is not None
    return record


def compiled_calls(step) -> dict:
    """Run a compiled ``DecodeStep`` once; count the kernels and library calls in inductor's output code."""
    import re

    from torch._inductor.utils import run_and_get_code

    with torch.no_grad():
        _, sources = run_and_get_code(step)
    calls = []
    for source in sources:
        body = source[source.index("def call("):]
        calls += re.findall(r"^\s+(cpp_fused_\w+|triton_\w+\.run|extern_kernels\.\w+|torch\.ops\.\w+\.\w+)\(",
                            body, re.M)
    library = [c for c in calls if not (c.startswith("cpp_fused") or c.startswith("triton_"))]
    return {"graphs": len(sources), "generated_kernels": len(calls) - len(library), "library_calls": len(library)}


def count_case(key, args, device, dtype) -> dict:
    """What one decode step (as a CUDA graph captures it: model, state update, sampling) runs."""
    model = build(key, 16, args, device, dtype)
    sampler = make_sampler(args, device)
    decoder = Decoder(model)
    decoder.prefill(torch.randint(0, args.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(device))
    if has_attention(model):  # a growing KV cache: no fixed-buffer step, count the eager one
        token = torch.zeros(1, dtype=torch.long, device=device)
        counter, _ = count_ops(lambda: sampler(decoder.step(token)))
        return {"model": key, "eager_step": counter.summary(top=40)}
    step = DecodeStep(model, decoder.states, sampler)
    with torch.no_grad():
        step()
        counter, _ = count_ops(step)
    record = {"model": key, "eager_step": counter.summary(top=40)}
    if args.count_compiled:  # the model part compiled; sampling stays eager ops in the captured graph
        for mode in ("default", "gemv"):
            record[f"compiled_{mode}"] = compiled_calls(DecodeStep(model, decoder.states, None, compile_mode=mode))
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    results = []
    if args.count_ops:
        for key in args.models:
            record = count_case(key, args, device, dtype)
            results.append(record)
            print(json.dumps(record), flush=True)
        args.models = []
    for key in args.models:
        recurrent = not has_attention(build(key, 16, args, "cpu", torch.float32))
        modes = [m for m in args.modes if m == "eager" or (recurrent and device.type == "cuda")]
        for context in args.contexts:
            for mode in modes:
                try:
                    record = run_case(key, context, mode, args, device, dtype)
                except Exception as err:  # noqa: BLE001 - record it (OOM, capture failure) and go on
                    record = {"model": key, "context": context, "mode": mode, "error": f"{type(err).__name__}: {err}"}
                results.append(record)
                print(format_row(record), flush=True)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    report = {
        "benchmark": "decode_bench",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def mib(n):
    return "-" if n is None else f"{n / 2**20:.1f}"


def format_row(r: dict) -> str:
    head = f"{r['model']:>8} ctx {r['context']:>6} {r['mode']:>7}"
    if "error" in r:
        return f"{head}  ERROR {r['error'][:160]}"
    extra = ""
    if "max_abs_diff_vs_eager" in r:
        extra = f"  graph={r['cuda_graph']} diff={r['max_abs_diff_vs_eager']:.1e}"
        if r.get("graph_error"):
            extra += f" ({r['graph_error'][:80]})"
    return (f"{head}  prefill {r['prefill_s']:7.2f}s  decode {r['decode_tok_s']:8.1f} tok/s  "
            f"state {mib(r['state_bytes_after_prefill'])} MiB  peak prefill/decode {mib(r['prefill_peak_bytes'])}/"
            f"{mib(r['decode_peak_bytes'])} MiB{extra}")


if __name__ == "__main__":
    raise SystemExit(main())
