"""Reading user text files with clear errors; checking the paths a command will write to.

The generic file writing (atomic writes, the usual permissions, ``read_json``) is ``groundthink/fileio.py``,
below every package, and is re-exported here for the modules that read and write run folders.
"""
from __future__ import annotations

from pathlib import Path

from groundthink.errors import UserError
from groundthink.fileio import atomic_write_bytes, atomic_write_text, fsync_dir, give_usual_mode, read_json

__all__ = ["TEXT_SUFFIXES", "read_text_file", "text_files_in", "check_output_folder", "check_output_file",
           "atomic_write_bytes", "atomic_write_text", "fsync_dir", "give_usual_mode", "read_json"]

TEXT_SUFFIXES = (".txt", ".text", ".md")


def read_text_file(path) -> str:
    """A UTF-8 text file's contents; missing, empty or non-UTF-8 files are a ``UserError``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} not found; pass an existing file or folder with --data "
                        f"(or a named source: recall, shakespeare, wikitext-2, wikitext-103)")
    if not path.is_file():
        raise UserError(f"data path {path} is not a regular file; pass a text file or a folder of .txt files")
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"data file {path} is empty; pass a file with text in it")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"data file {path} is not UTF-8 text (invalid byte at offset {err.start}); "
                        f"convert it to UTF-8 first, e.g. iconv -f latin1 -t utf-8") from None


def text_files_in(folder) -> list[Path]:
    """The text files of a folder (recursively, sorted, hidden entries skipped)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise UserError(f"data folder {folder} has no text files ({', '.join(TEXT_SUFFIXES)}); "
                        f"pass a folder that has some, or a single file")
    return files


def check_output_folder(path, flag: str) -> Path:
    """A folder a command will write into: refused in one line when it names an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass a folder name with {flag}")
    return path


def check_output_file(path, flag: str) -> Path:
    """A file a command will write at the end: refused in one line now (before any work) when it is a folder
    or its folder does not exist."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass a file name with {flag}, e.g. {path / 'results.json'}")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: the folder {path.parent} does not exist; create it or pass another path")
    return path
