"""Reading user text files with clear errors, writing files atomically, with the usual permissions."""
from __future__ import annotations

import json
import os
from pathlib import Path

from groundthink.errors import UserError

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


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A reader (or a crash at any moment) sees either the old file or the complete new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def current_umask() -> int:
    """The process's umask: read from /proc on Linux; elsewhere set and put back at once (os has no getter)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_usual_mode(path) -> None:
    """The mode ``open(path, "w")`` would have given (0666 less the umask) to a file a library created 0600.

    safetensors writes its files 0600, so a run folder's or an exported folder's weights would be readable by
    their owner only.
    """
    os.chmod(path, 0o666 & ~current_umask())


def fsync_dir(path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path) -> dict | None:
    """A JSON file's contents, or None when it is missing or unreadable (a run folder still being written)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
