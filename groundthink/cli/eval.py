"""``groundthink eval RUN_DIR``: validation loss and perplexity of a run's best (or last) checkpoint."""
from __future__ import annotations

import json

from groundthink.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="val loss / perplexity of a trained run's checkpoint")
    parser.add_argument("run", metavar="RUN_DIR", help="a run folder, or one of its checkpoint folders")
    parser.add_argument("--data", metavar="SOURCE",
                        help="evaluate on this text instead of the run's validation split (a file or folder: "
                             "all of it; a named source: its validation split)")
    parser.add_argument("--which", choices=("best", "last"), default="best")
    parser.add_argument("--max-windows", "--max_windows", dest="max_windows", metavar="N",
                        help="evaluate on at most N evenly spaced windows (default: all)")
    parser.add_argument("--device", default="cpu", metavar="DEV")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def eval_tokens(loaded, source: str | None):
    """Validation tokens: the run's own split, or the given source's text, in the run's tokenizer."""
    from groundthink.data import load_data, split_corpus
    from groundthink.data.cache import encode_array
    from groundthink.data.sources import NAMED_SOURCES, load_corpus

    data_config = loaded.config.data
    if source is None:
        bundle = load_data(data_config, tokenizer=loaded.tokenizer)
        return bundle.val, bundle.name, bundle
    other = type(data_config)(**{**vars(data_config), "source": source, "val_source": None})
    corpus = load_corpus(other)
    if corpus.val_text is not None or source in NAMED_SOURCES:
        text = split_corpus(corpus, other.val_fraction)[1]
    else:
        text = corpus.train_text
    return encode_array(text, loaded.tokenizer), corpus.name, None


def run(args) -> int:
    import torch

    from groundthink.data.sampler import check_window
    from groundthink.devices import resolve_device
    from groundthink.progress import Progress, announce, count_model_tokens
    from groundthink.training.checkpoint import load_run
    from groundthink.training.config import coerce
    from groundthink.training.evaluation import consecutive_windows, evaluate_loss, perplexity

    max_windows = coerce(args.max_windows, int, "--max-windows", True) if args.max_windows else None
    if max_windows is not None and max_windows <= 0:
        raise UserError(f"--max-windows must be a positive integer, got {max_windows}")
    loaded = load_run(args.run, which=args.which)
    device = resolve_device(args.device)
    seq_len = loaded.config.train.seq_len
    tokens, name, bundle = eval_tokens(loaded, args.data)
    check_window(tokens, seq_len, "evaluation")
    windows = consecutive_windows(tokens, seq_len, max_windows)
    task = bundle.task(seq_len) if bundle is not None else None
    model = loaded.model.to(device)
    # The work is the tokens the model reads: every window, then the task's own batches (recall).
    task_ids = getattr(task, "ids", None)
    total = len(windows) * seq_len + (0 if task_ids is None else task_ids[:, :-1].numel())
    announce(f"eval: {loaded.run_dir} {loaded.checkpoint.name} (step {loaded.step}): {len(windows):,} windows of "
             f"{seq_len} tokens of {name} on {device}")
    with Progress(total, "eval", unit="tok") as progress, count_model_tokens(model, progress, backward_weight=0):
        with torch.no_grad():
            loss = evaluate_loss(model, windows, loaded.config.train.batch_size, device)
        result = {"run_dir": str(loaded.run_dir), "checkpoint": loaded.checkpoint.name, "step": loaded.step,
                  "data": name, "windows": len(windows), "seq_len": seq_len, "val_loss": loss,
                  "val_ppl": perplexity(loss)}
        if task is not None:
            result.update(task.evaluate(model, device))
    if args.json:
        print(json.dumps(result))
    else:
        print(result_text(result))
    return 0


def result_text(result: dict, width: int = 100) -> str:
    """One line when it fits ``width`` columns; else the data on a line of its own (and the run folder too,
    when it is long)."""
    extra = f", recall accuracy {result['recall_acc']:.1%}" if "recall_acc" in result else ""
    numbers = f"{result['checkpoint']}: val loss {result['val_loss']:.4f}, perplexity {result['val_ppl']:.2f}{extra}"
    data = f"({result['windows']} windows of {result['seq_len']} tokens of {result['data']})"
    line = f"{result['run_dir']} {numbers}"
    if len(line) + 1 + len(data) <= width:
        return f"{line} {data}"
    return f"{line}\n  {data}" if len(line) <= width else f"{result['run_dir']}\n  {numbers}\n  {data}"
