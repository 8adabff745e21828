"""``groundthink plot RUN [RUN ...]``: training curves of one run or several overlaid, from metrics.jsonl.

A sweep folder (or any folder above run folders) stands for every run folder under it. Default output:
``RUN/curves.png`` for a single folder given (a run or a sweep), else ``curves.png`` here.
"""
from __future__ import annotations

from pathlib import Path

from groundthink.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="training curves (loss, lr, balance metrics) of runs, overlaid; a sweep folder = its runs")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or sweep folders holding them")
    parser.add_argument("--out", metavar="FILE", help="the PNG to write (default: RUN/curves.png for one folder, "
                                                      "else ./curves.png)")
    parser.add_argument("--title", help="figure title (default: the run's label, or the number of runs)")
    parser.set_defaults(func=run)


def expand(paths: list[str]) -> list[Path]:
    """Run folders (those with a metrics.jsonl), a folder without one standing for the runs under it."""
    runs: list[Path] = []
    for text in paths:
        path = Path(text)
        if not path.is_dir():
            raise UserError(f"{path} is not a folder; pass run folders written by groundthink train or sweep")
        if (path / "metrics.jsonl").is_file():
            runs.append(path)
            continue
        found = sorted(p.parent for p in path.rglob("metrics.jsonl"))
        if not found:
            raise UserError(f"{path} holds no run (no metrics.jsonl in it or below); pass a run or sweep folder")
        runs += found
    return list(dict.fromkeys(runs))


def run(args) -> int:
    from groundthink.diagnostics.curves import CURVES, plot_curves, run_label
    from groundthink.diagnostics.runlog import RunLog

    runs = expand(args.runs)
    out = Path(args.out) if args.out else Path(args.runs[0]) / CURVES if len(args.runs) == 1 else Path(CURVES)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must name a .png file")
    labelled = [(run_label(r), RunLog.read(r / "metrics.jsonl")) for r in runs]
    if plot_curves(labelled, out, title=args.title) is None:
        raise UserError(f"no run among {', '.join(map(str, runs))} logged any number yet; train first")
    print(f"{out} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
    return 0
