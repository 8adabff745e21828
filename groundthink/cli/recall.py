"""``groundthink recall-probe``: which branch recalls? Models trained on token-level MQAR (Zoology's probe),
scored with and without each branch (groundthink/experiments/recall_probe.py)."""
from __future__ import annotations

from pathlib import Path

from groundthink.errors import UserError

DEFAULT_OUT = Path("experiments") / "results" / "recall-probe"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "recall-probe", help="train models on multi-query associative recall; accuracy with and without each branch",
        description="Train each model from scratch on token-level MQAR for each setting and report test accuracy; "
                    "two-branch models also with RWKV-6's and with Mamba-2's output zeroed. Writes results.json "
                    "(after every model: rerun the same command to continue) and results.md.")
    parser.add_argument("--settings", default="64:4,128:8,256:16", metavar="T:KV,...",
                        help="sequence length : key-value pairs, comma-separated (default 64:4,128:8,256:16)")
    parser.add_argument("--models", default="GF-MH,RWKV6,MAMBA2,GPT2", help="registry keys, comma-separated")
    parser.add_argument("--vocab", default="8192", help="vocabulary: keys from the lower half, values the upper")
    parser.add_argument("--hidden", default="128", help="hidden size of every model")
    parser.add_argument("--layers", default="4", help="layers of the recurrent and hybrid models")
    parser.add_argument("--attention-layers", default="2", help="layers of attention-only models (GPT2)")
    parser.add_argument("--steps", default="2000", help="training steps per model and setting")
    parser.add_argument("--batch-size", default="64", help="sequences per step (and per scoring batch)")
    parser.add_argument("--lr", default="1e-3", help="learning rates, comma-separated: each trained, best kept")
    parser.add_argument("--test-examples", default="1000", help="test sequences per setting")
    parser.add_argument("--seeds", default="0", help="seeds, comma-separated")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                        help="another model setting for every model, e.g. --set model.rwkv_heads=2 (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    parser.set_defaults(func=run)


def listed(text: str, kind, what: str) -> list:
    from groundthink.training.config import coerce

    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise UserError(f"{what} is empty; give one or more values, comma-separated")
    return [coerce(item, kind, what, True) for item in items]


def single(text: str, kind, what: str):
    values = listed(text, kind, what)
    if len(values) != 1:
        raise UserError(f"{what} takes one value, got {text!r}")
    return values[0]


def settings_of(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in listed(text, str, "--settings"):
        length, _, kv = item.partition(":")
        if not (length.isdigit() and kv.isdigit()):
            raise UserError(f"--settings entry {item!r} must be SEQ_LEN:PAIRS, e.g. 64:4")
        pairs.append((int(length), int(kv)))
    return pairs


def model_settings(overrides: list[str]) -> dict:
    from groundthink.training.config import Config, set_value

    config = Config()
    config.model.settings = {}
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.startswith("model.") or dotted == "model.key":
            raise UserError(f"--set {item!r} must look like model.KEY=VALUE (e.g. --set model.rwkv_heads=2)")
        set_value(config, dotted.strip(), value.strip(), "--set", from_string=True)
    return config.model.settings


def run(args) -> int:
    from groundthink.experiments.recall_probe import ProbeOptions, run_probe

    options = ProbeOptions(
        settings=settings_of(args.settings), models=listed(args.models, str, "--models"),
        vocab_size=single(args.vocab, int, "--vocab"), hidden_size=single(args.hidden, int, "--hidden"),
        layers=single(args.layers, int, "--layers"), attention_layers=single(args.attention_layers, int, "--attention-layers"),
        model_settings=model_settings(args.overrides), steps=single(args.steps, int, "--steps"),
        batch_size=single(args.batch_size, int, "--batch-size"), lrs=listed(args.lr, float, "--lr"),
        test_examples=single(args.test_examples, int, "--test-examples"), seeds=listed(args.seeds, int, "--seeds"),
        device=args.device, precision=args.precision)
    argv = ["groundthink", "recall-probe"] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                               if k not in ("func", "command", "overrides")]
    argv += [f"--set={item}" for item in args.overrides]
    run_probe(options, args.out, argv=argv)
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0
