"""``groundthink sweep configs/sweeps/NAME.yaml``: run a matrix of models x variants x seeds, resumably,
then write results.csv / results.md / plots (see groundthink/experiments)."""
from __future__ import annotations

from pathlib import Path

from groundthink.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="run a sweep spec (models x variants x seeds), resumable; results tables and plots",
        description="Run every run of a sweep spec that is not finished (rerun the same command to continue), "
                    "then write results.csv, runs.csv, results.md and plots/ in the output folder.")
    parser.add_argument("spec", metavar="SPEC.yaml", help="a sweep spec, e.g. configs/sweeps/fusion.yaml")
    parser.add_argument("--out", metavar="DIR", help="sweep folder (default runs/sweeps/<name>)")
    parser.add_argument("--parallel", metavar="N", default="1",
                        help="runs at a time, each in its own worker process (small models share a GPU well)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: rebuild results and plots from the run folders as they are")
    parser.add_argument("--results", metavar="DIR", help="where results.* and plots/ go (default: the sweep folder)")
    parser.add_argument("--data-root", metavar="DIR", help="replaces {data_root} in the spec (default: its data_root)")
    parser.add_argument("--seeds", metavar="LIST", help="comma-separated seeds instead of the spec's, e.g. 0,1")
    parser.add_argument("--only", metavar="MODELS", help="comma-separated model names: run only these rows")
    parser.add_argument("--time-budget", metavar="SECONDS",
                        help="start no run that the slowest run so far says would end after this many seconds")
    parser.add_argument("--pack", metavar="FILE.tar.gz",
                        help="afterwards, archive the sweep folder without checkpoints (to carry results elsewhere)")
    parser.add_argument("--estimate", metavar="STEPS", nargs="?", const="3",
                        help="train nothing: time STEPS (default 3) steps of each row here and print how long the "
                             "sweep would take, one run at a time (an estimate)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a base config field for every run, e.g. --set train.steps=50 (repeatable)")
    parser.set_defaults(func=run)


def integers(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise UserError(f"{what} must be comma-separated integers >= 0, e.g. 0,1,2; got {text!r}")
    return values


def run(args) -> int:
    from groundthink.experiments import load_spec, run_sweep
    from groundthink.training.config import coerce

    parallel = coerce(args.parallel, int, "--parallel", True)
    if parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    budget = None if args.time_budget is None else coerce(args.time_budget, float, "--time-budget", True)
    spec = load_spec(args.spec, data_root=args.data_root, overrides=args.overrides,
                     seeds=integers(args.seeds, "--seeds") if args.seeds else None,
                     only=[m.strip() for m in args.only.split(",") if m.strip()] if args.only else None)
    if args.estimate is not None:
        from groundthink.experiments.estimate import estimate
        from groundthink.experiments.spec import check_data

        check_data(spec)
        estimate(spec, coerce(args.estimate, int, "--estimate", True))
        return 0
    return run_sweep(spec, Path(args.out) if args.out else None, parallel=parallel, time_budget=budget,
                     dry_run=args.dry_run, report_only=args.report,
                     results_dir=Path(args.results) if args.results else None,
                     pack=Path(args.pack) if args.pack else None, argv=command_line(args))


def command_line(args) -> list[str]:
    """The command as typed (recorded in the sweep folder, printed in results.md)."""
    words = ["groundthink", "sweep", args.spec]
    for flag in ("out", "parallel", "results", "data_root", "seeds", "only", "time_budget", "pack"):
        value = getattr(args, flag)
        if value is not None and not (flag == "parallel" and str(value) == "1"):
            words += ["--" + flag.replace("_", "-"), str(value)]
    for item in args.overrides:
        words += ["--set", item]
    return words
