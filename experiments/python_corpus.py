"""Build a text corpus from Python source files (default: this interpreter's standard library), for the
scale sweeps (configs/sweeps/scale-*.yaml): tens of MB of real text that a ~30M-parameter model cannot
memorize in the sweeps' budget, available on any machine with Python and no network.

    python experiments/python_corpus.py .data/python-stdlib [--root DIR ...] [--tokens 8192]

Writes OUT/train.txt and OUT/valid.txt (a folder the data loader reads with its own split) and
OUT/corpus.json (files, bytes, and with --tokens the byte-level BPE token counts the sweep's tokenizer of
that vocabulary gives). Every ``.py`` file under the roots that is UTF-8 text is taken, in sorted order,
skipping installed packages (site-packages), caches and hidden folders; whole files go to validation by a
hash of their path (~10%), so validation modules are never seen in training.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's groundthink

from groundthink.data.cache import cached_bpe, encode_array
from groundthink.data.files import atomic_write_text

SKIPPED_PARTS = {"site-packages", "dist-packages", "__pycache__"}


def source_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if p.is_file()
                  and not any(part in SKIPPED_PARTS or part.startswith(".") for part in p.relative_to(root).parts))


def in_validation(relative: str, share: float) -> bool:
    digest = hashlib.sha256(relative.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") < share * 2 ** 32


def build(roots: list[Path], out: Path, val_share: float = 0.1, tokens_vocab: int | None = None) -> dict:
    parts: dict[str, list[str]] = {"train": [], "valid": []}
    skipped = 0
    for root in roots:
        for path in source_files(root):
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                skipped += 1
                continue
            relative = f"{root.name}/{path.relative_to(root).as_posix()}"
            parts["valid" if in_validation(relative, val_share) else "train"].append(text)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"roots": [str(r) for r in roots], "python": platform.python_version(), "skipped_not_utf8": skipped}
    texts = {}
    for split, files in parts.items():
        texts[split] = "\n".join(files)
        atomic_write_text(out / f"{split}.txt", texts[split])
        summary[split] = {"files": len(files), "bytes": len(texts[split].encode("utf-8")),
                          "chars": len(texts[split])}
    if tokens_vocab:
        tokenizer = cached_bpe([texts["train"]], tokens_vocab, None)  # as the run trains it: on the train split
        for split in parts:
            summary[split][f"bpe{tokens_vocab}_tokens"] = len(encode_array(texts[split], tokenizer))
    atomic_write_text(out / "corpus.json", json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (train.txt, valid.txt, corpus.json)")
    parser.add_argument("--root", type=Path, action="append",
                        help="a folder of Python sources (repeatable; default: this Python's standard library)")
    parser.add_argument("--val-share", type=float, default=0.1, help="share of files for validation (default 0.1)")
    parser.add_argument("--tokens", type=int, metavar="VOCAB", help="also count byte-level BPE tokens at this vocab")
    args = parser.parse_args(argv)
    roots = args.root or [Path(sysconfig.get_paths()["stdlib"])]
    missing = [r for r in roots if not r.is_dir()]
    if missing:
        parser.error(f"--root {missing[0]} is not a folder; pass a folder of .py files")
    if not 0 < args.val_share < 1:
        parser.error(f"--val-share must be in (0, 1), got {args.val_share}")
    print(json.dumps(build(roots, args.out, args.val_share, args.tokens), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
