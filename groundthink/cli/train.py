"""``groundthink train``: train a registered model; ``--resume RUN_DIR`` continues a run exactly."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import groundthink
from groundthink.errors import UserError

# Common flags and the config field each one sets (the seed design's spellings --batch_size / --seq_len work too).
FLAG_FIELDS = {"model": "model.key", "steps": "train.steps", "batch_size": "train.batch_size",
               "seq_len": "train.seq_len", "data": "data.source", "device": "train.device", "seed": "train.seed"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (no arguments: GF-MH on the offline recall corpus, ~1-2 min on a CPU)",
        description="Train a registered model. Settings: defaults < --config YAML < flags < --set.")
    parser.add_argument("--config", metavar="YAML", help="a preset such as configs/shakespeare-char.yaml")
    parser.add_argument("--model", metavar="KEY", help="registry key (groundthink models lists them)")
    parser.add_argument("--steps", metavar="N")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", metavar="N")
    parser.add_argument("--seq-len", "--seq_len", dest="seq_len", metavar="N")
    parser.add_argument("--data", metavar="SOURCE",
                        help="a text file, a folder, or recall | shakespeare | wikitext-2 | wikitext-103")
    parser.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--seed", metavar="N")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/MODEL-DATA-TIME)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config field, e.g. --set train.lr=1e-3 (repeatable)")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="data-parallel training on N processes of this machine (one per GPU; gloo on CPU): "
                             "relaunches this command under torchrun (README: Multi-GPU)")
    parser.set_defaults(func=run, train_parser=parser)


def flag_overrides(args) -> list[str]:
    return [f"{field}={getattr(args, flag)}" for flag, field in FLAG_FIELDS.items() if getattr(args, flag) is not None]


def build_config(args):
    """The run's config and folder, from the flags (new run) or from the run folder (``--resume``)."""
    from groundthink.training.config import load_config
    from groundthink.training.run_folder import RunFolder

    overrides = flag_overrides(args) + list(args.overrides)
    if not args.resume:
        config = load_config(args.config, overrides)
        return config, Path(args.out) if args.out else default_run_dir(config)
    if args.config:
        raise UserError("--config cannot be combined with --resume: a run keeps its own config.yaml; change "
                        "training settings with --set train.KEY=VALUE")
    folder = RunFolder(args.resume)
    if args.out and Path(args.out).resolve() != folder.path.resolve():
        raise UserError("--out cannot be combined with --resume: the run continues in its own folder")
    # --model is part of `overrides` too; a different key is refused with the run's own message.
    return folder.resumed_config([o for o in overrides if not o.startswith("model.key=")], args.model), folder.path


def default_run_dir(config) -> Path:
    source = config.data.source
    name = source if "/" not in source and "." not in source else Path(source).stem or "data"
    return Path("runs") / f"{config.model.key}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def relaunch_argv(args, run_dir) -> list[str]:
    """``train`` and the flags given, less --nproc, with the run folder fixed (its default name has a time)."""
    argv = ["train"]
    for action in args.train_parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("help", "nproc", "out") or value is None \
                or value is False or value == []:
            continue
        for item in value if isinstance(value, list) else [value]:
            argv += [action.option_strings[0]] + ([] if action.nargs == 0 else [str(item)])
    return argv if args.resume else argv + ["--out", str(run_dir)]


def run(args, hooks=()) -> int:
    """The command; ``hooks`` are extra trainer hooks (the tests' fault injection uses this seam)."""
    from groundthink.training import launch

    config, run_dir = build_config(args)
    if args.nproc is not None and args.nproc != 1:
        return launch.launch(args.nproc, relaunch_argv(args, run_dir), config.train)
    if launch.world_size_from_env() > 1:  # one rank of a torchrun job: it ends its process itself
        launch.run_rank(config.train, lambda: fit(args, config, run_dir, hooks))
    return fit(args, config, run_dir, hooks)


def fit(args, config, run_dir, hooks=()) -> int:
    from groundthink.diagnostics.curves import save_run_curves
    from groundthink.training.launch import make_trainer, peer_failures_explained

    trainer = make_trainer(config, run_dir, resume=bool(args.resume), hooks=hooks)  # one rank's under torchrun
    trainer.clock.add_before_start("startup", groundthink.IMPORTED_AT)  # this process's imports and parsing
    run_dir = trainer.run_dir
    with peer_failures_explained(trainer):
        summary = trainer.fit()
    if trainer.is_main:
        save_run_curves(run_dir)  # RUN_DIR/curves.png; a plot that fails is a warning, never a failed run
    if summary["status"] == "interrupted":
        return 128 + (signal.SIGTERM if summary.get("signal") == "SIGTERM" else signal.SIGINT)
    if not trainer.is_main:
        return 0  # rank 0 reports
    best = summary.get("best_val_loss")
    final = summary.get("final", {})
    line = f"{summary['status']}: step {summary['step']}"
    if best is not None:
        line += f", best val loss {best:.4f} (ppl {summary['best_val_ppl']:.2f}) at step {summary['best_step']}"
    if final.get("recall_acc") is not None:
        line += f", recall accuracy {final['recall_acc']:.1%}"
    if summary.get("tok_per_s"):
        line += f", {summary['tok_per_s']:,.0f} tok/s"
    print(f"{line}; run folder {run_dir}")
    return 0
