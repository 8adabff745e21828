"""``groundthink diagnose RUN_DIR_or_CHECKPOINT``: every suite of docs/design.md#diagnostics as one table, plus
report.md, diagnosis.json and PNG plots (default folder: ``RUN_DIR/diagnostics/<checkpoint>``)."""
from __future__ import annotations

from groundthink.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose", help="graduation suites (S0-S4, G1-G4, D1-D4), balance metrics, ablation, plots of a run")
    parser.add_argument("run", metavar="RUN_DIR_or_CHECKPOINT", help="a run folder, or one of its checkpoint folders")
    parser.add_argument("--data", metavar="SOURCE",
                        help="diagnose on this text instead of the run's validation split (as groundthink eval)")
    parser.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint of a run folder")
    parser.add_argument("--out", metavar="DIR", help="where report.md, diagnosis.json and the plots go")
    parser.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--seq-len", "--seq_len", dest="seq_len", metavar="T",
                        help="the training length T (default: the run's train.seq_len)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", metavar="N",
                        help="sequences in the evaluation batch (default 16)")
    parser.add_argument("--train-steps", "--train_steps", dest="train_steps", metavar="N",
                        help="steps of the short AdamW loop for gradient coupling (and G3 without a log; default 30)")
    parser.add_argument("--overfit-steps", "--overfit_steps", dest="overfit_steps", metavar="N",
                        help="at most N steps for the overfit check (default 500, stops at loss 0.5; 0 skips it)")
    parser.set_defaults(func=run)


def options_from(args, seq_len: int):
    from groundthink.diagnostics.probe import DiagnoseOptions
    from groundthink.training.config import coerce

    settings = {"seq_len": seq_len}
    for name in ("seq_len", "batch_size", "train_steps", "overfit_steps"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = coerce(value, int, "--" + name.replace("_", "-"), True)
    try:
        return DiagnoseOptions(**settings)
    except ValueError as err:
        raise UserError(str(err).replace("diagnose option ", "--").replace("_", "-")) from None


def run(args) -> int:
    from groundthink.cli.eval import eval_tokens
    from groundthink.data.files import check_output_folder
    from groundthink.devices import resolve_device
    from groundthink.diagnostics.report import diagnose
    from groundthink.training.checkpoint import load_run, load_weights

    loaded = load_run(args.run, which=args.which)
    device = resolve_device(args.device)
    options = options_from(args, loaded.config.train.seq_len)
    tokens, name, _ = eval_tokens(loaded, args.data)
    model = loaded.model.to(device)

    def reload():
        fresh = type(model)(model.config)
        load_weights(fresh, loaded.checkpoint)
        return fresh

    out = check_output_folder(args.out, "--out") if args.out else loaded.run_dir / "diagnostics" / loaded.checkpoint.name
    print(f"diagnose {loaded.run_dir} {loaded.checkpoint.name} (step {loaded.step}) on {len(tokens):,} tokens of "
          f"{name}, T = {options.seq_len}, {device}", flush=True)
    try:
        result = diagnose(model, loaded.tokenizer, tokens, loaded.run_dir, out, options, step=loaded.step,
                          reload=reload)
    except ValueError as err:  # data that does not fit the run (too short, ids beyond the vocabulary)
        raise UserError(str(err).splitlines()[0]) from None
    print(result.table())
    print(f"report: {out / 'report.md'}")
    return 0
