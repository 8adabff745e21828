"""The scale study's table and plot from several finished (or partly finished) sweeps of growing size.

    python experiments/scale_report.py configs/sweeps/scale-9m.yaml runs/sweeps/scale-9m \\
        configs/sweeps/scale-30m.yaml runs/sweeps/scale-30m --results experiments/results/scale

Arguments come in pairs (sweep spec, its sweep folder). Writes scale.csv, scale.md and scale.png
(groundthink/experiments/scale.py); each sweep's own tables come from ``groundthink sweep SPEC --report``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's groundthink

from groundthink.errors import UserError
from groundthink.experiments.scale import write_scale_report
from groundthink.experiments.spec import load_spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", metavar="SPEC.yaml SWEEP_DIR", help="sweep specs and their folders, in pairs")
    parser.add_argument("--results", type=Path, required=True, help="where scale.csv / scale.md / scale.png go")
    parser.add_argument("--reference", default="GPT2", help="the model every row's loss is divided by (default GPT2)")
    parser.add_argument("--data-root", help="the sweeps' {data_root}, as they were run (default: each spec's)")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give the sweeps as pairs: SPEC.yaml SWEEP_DIR [SPEC.yaml SWEEP_DIR ...]")
    try:
        sweeps = []
        for spec_path, folder in zip(args.pairs[::2], args.pairs[1::2]):
            if not Path(folder).is_dir():
                raise UserError(f"sweep folder {folder} not found; run groundthink sweep {spec_path} first "
                                f"(or unpack its --pack archive)")
            sweeps.append((load_spec(spec_path, data_root=args.data_root), Path(folder)))
        for path in write_scale_report(sweeps, args.results, args.reference):
            print(path)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
