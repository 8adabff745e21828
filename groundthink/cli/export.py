"""``groundthink export RUN_DIR OUT_DIR``: a trained run as a Hugging Face folder (needs the ``hf`` extra)."""
from __future__ import annotations

from groundthink.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a run as a Hugging Face model folder (safetensors)")
    parser.add_argument("run_dir", help="a run folder written by groundthink train (or one of its checkpoints)")
    parser.add_argument("out_dir", help="the folder to create (must not exist, or be empty)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--eos-token", "--eos_token", default=None,
                        help="a token of the vocabulary that ends generation (default: none)")
    parser.add_argument("--bos-token", "--bos_token", default=None,
                        help="the token tools prepend to empty contexts (default: the newline token)")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        from groundthink.hf import export_hf
    except ImportError as err:
        raise UserError(f"export needs the Hugging Face extra ({err}): pip install -e \".[hf]\"") from None
    from transformers.utils import logging as hf_logging

    from groundthink.training.checkpoint import load_run

    hf_logging.disable_progress_bar()  # one summary line instead of per-shard progress bars
    loaded = load_run(args.run_dir, which=args.checkpoint)
    try:
        out = export_hf(loaded.model, loaded.tokenizer, args.out_dir, eos_token=args.eos_token,
                        bos_token=args.bos_token)
    except ValueError as err:
        raise UserError(str(err)) from None
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {loaded.run_dir} (step {loaded.step}, {loaded.checkpoint.name}) to {out}: {files}")
    print(f"load it with: import groundthink.hf; AutoModelForCausalLM.from_pretrained({str(out)!r})  "
          f"(or trust_remote_code=True without the import)")
    return 0
