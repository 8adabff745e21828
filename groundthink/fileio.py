"""Writing files safely, shared by every layer (ops' kernel records, data's caches, training's run folders):
atomic writes, the usual permissions for files a library created 0600, and reading JSON that may be absent."""
from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A reader (or a crash at any moment) sees either the old file or the complete new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # open, not mkstemp: the file gets the usual mode (0666 less the umask)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt leaves no temporary file behind
        tmp.unlink(missing_ok=True)
        raise


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
