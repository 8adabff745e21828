"""``groundthink train``: train a registered model; ``--resume RUN_DIR`` continues a run exactly."""
from __future__ import annotations

import copy
import signal
import time
from pathlib import Path

from groundthink.errors import UserError

# Common flags and the config field each one sets (the seeds' spellings --batch_size / --seq_len work too).
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
    from groundthink.training.config import config_from_dict, load_config, read_yaml
    from groundthink.training.trainer import absolute_source

    overrides = flag_overrides(args) + list(args.overrides)
    if not args.resume:
        config = load_config(args.config, overrides)
        return config, Path(args.out) if args.out else default_run_dir(config)
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); --resume takes a folder written by "
                        f"groundthink train")
    if args.config:
        raise UserError("--config cannot be combined with --resume: a run keeps its own config.yaml; change "
                        "training settings with --set train.KEY=VALUE")
    if args.out and Path(args.out).resolve() != run_dir.resolve():
        raise UserError("--out cannot be combined with --resume: the run continues in its own folder")
    saved = config_from_dict(read_yaml(run_dir / "config.yaml"), origin=str(run_dir / "config.yaml"))
    if args.model is not None and args.model != saved.model.key:
        raise UserError(f"run {run_dir} trained model {saved.model.key!r}, not {args.model!r}; drop --model to "
                        f"resume it, or start a new run with --out")
    config = load_config(None, overrides, base=copy.deepcopy(saved))
    for data in (saved.data, config.data):  # a relative path to the same file is the same data
        data.source, data.val_source = absolute_source(data.source), absolute_source(data.val_source)
    # Training settings may change on resume; the model and the data may not (the checkpoint depends on them).
    for section in ("model", "data"):
        before, after = saved.to_dict()[section], config.to_dict()[section]
        changed = [key for key in after if after[key] != before.get(key)]
        if changed:
            raise UserError(f"{section}.{changed[0]} cannot change when resuming (the checkpoint depends on it); "
                            f"only train.* settings can, e.g. --steps or --set train.lr=...")
    return config, run_dir


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


def run(args) -> int:
    from groundthink.training import distributed

    config, run_dir = build_config(args)
    if args.nproc is not None and args.nproc != 1:
        return distributed.launch(args.nproc, relaunch_argv(args, run_dir), config.train)
    if distributed.world_size_from_env() > 1:  # one rank of a torchrun job: it ends its process itself
        distributed.run_rank(config.train, lambda: fit(args, config, run_dir))
    return fit(args, config, run_dir)


def fit(args, config, run_dir) -> int:
    from groundthink.diagnostics.curves import save_run_curves
    from groundthink.training.distributed import make_trainer

    trainer = make_trainer(config, run_dir, resume=bool(args.resume))  # a DistributedTrainer under torchrun
    run_dir = trainer.run_dir
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
