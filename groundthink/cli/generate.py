"""``groundthink generate RUN_DIR``: sample text from a trained run, streamed to the terminal.

Recurrent models decode with constant memory (one state update per token); the GPT baseline with its KV
cache. On CUDA the decode step of attention-free models (sampling included) replays as a CUDA graph
(``--no-cuda-graph`` to turn it off); ``--compile gemv`` also compiles it first (~15 s once; on an H100 the
hidden-128 char model then decodes ~2,700 greedy tok/s instead of ~870, 2,400 with top-k/top-p sampling:
benchmarks/results/2026-11-25-h100).
"""
from __future__ import annotations

import sys
import time

from groundthink.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="sample text from a trained run (streamed)")
    parser.add_argument("run_dir", help="a run folder written by groundthink train (or one of its checkpoints)")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", "--top_k", type=int, default=None)
    parser.add_argument("--top-p", "--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="same seed, same text")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-cuda-graph", action="store_true", help="decode eagerly on CUDA")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the decode step before capturing it (CUDA); gemv: the fastest at "
                             "batch 1 (every matrix-vector product fused with its neighbours)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from groundthink.devices import resolve_device
    from groundthink.inference.compile import COMPILE_MODES
    from groundthink.inference.generate import TextStream, generate_tokens
    from groundthink.inference.sampling import check_sampling
    from groundthink.progress import Progress
    from groundthink.training.checkpoint import load_run

    try:
        check_sampling(args.temperature, args.top_k, args.top_p)
    except ValueError as err:
        raise UserError(f"{err} (--temperature / --top-k / --top-p)") from None
    if args.compile is not None and args.compile not in COMPILE_MODES:
        raise UserError(f"--compile {args.compile!r} is not a mode; use one of {', '.join(COMPILE_MODES)}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be a positive integer, got {args.max_new_tokens}")
    device = resolve_device(args.device)
    loaded = load_run(args.run_dir, which=args.checkpoint)
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise UserError("the prompt encodes to no tokens; give a non-empty --prompt")

    import torch

    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    tokens = generate_tokens(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed, cuda_graph=not args.no_cuda_graph,
                             compile=args.compile or False, host=True)  # host: read back without stalling
    stream, count = TextStream(tokenizer), 0
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    start = time.perf_counter()
    # Text streamed to a terminal shows its own progress; written to a file or a pipe, stderr shows it.
    progress = Progress(args.max_new_tokens, "generate", unit="tok", closing_line=False,
                        quiet=sys.stdout.isatty())
    try:
        for token in tokens:
            count += 1
            sys.stdout.write(stream.push(int(token[0])))
            sys.stdout.flush()
            progress.update(1)
    except ValueError as err:  # e.g. the GPT baseline's position limit
        raise UserError(str(err)) from None
    finally:
        progress.close()
    sys.stdout.write(stream.flush() + "\n")
    elapsed = time.perf_counter() - start
    print(f"[{count} tokens in {elapsed:.2f}s, {count / max(elapsed, 1e-9):.1f} tok/s, {loaded.model.config.n_layers}"
          f" layers, step {loaded.step} ({loaded.checkpoint.name}), {device}]", file=sys.stderr)
    return 0
