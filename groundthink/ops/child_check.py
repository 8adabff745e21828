"""A check run in a child process: started in the background, collected later, a failure named by its cause.

Used by the Hopper self-check (``ops/fla_hopper.py``): a kernel that faults there leaves the child's CUDA
context unusable, not this process's. The child prints ``STARTED_MARK`` once its setup (imports, CUDA) is
done and the checked code begins, and its result as the last line of its output, in JSON; so a failure
after the mark is the checked code's, one before it the environment's (an import error, no GPU, Ctrl-C).
"""
from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STARTED_MARK = "groundthink-child-check: started"
# "<file>:<line>: <Category>Warning: <text>", as the warnings module prints it (its next, indented line is
# the source line it points at).
WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: ")

_RUNNING: set[ChildCheck] = set()


@dataclass
class ChildResult:
    value: dict | None       # the child's JSON result, when it exited cleanly with one
    reason: str | None       # otherwise why not, from its exit status and stderr
    started: bool            # the child reached the checked code (printed STARTED_MARK)
    environmental: bool      # the failure says nothing about the checked code (timeout, signal from outside)


class ChildCheck:
    """``python -m module args...`` in the background (its output in temporary files, never a full pipe)."""

    def __init__(self, module: str, args: list[str], timeout: float = 600):
        # The child imports this package from where the parent did (a checkout on sys.path need not be installed).
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self.stdout, self.stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        # -X faulthandler: a child killed by a signal (segmentation fault, abort) still says where.
        self.process = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", module, *args],
                                        stdout=self.stdout, stderr=self.stderr, stdin=subprocess.DEVNULL, env=env)
        _RUNNING.add(self)

    def result(self) -> ChildResult:
        """Wait for the child (up to the rest of its timeout) and read what it said."""
        try:
            returncode = self.process.wait(timeout=max(self.deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            returncode = None
            self.stop()
        _RUNNING.discard(self)
        out, err = self._read(self.stdout), self._read(self.stderr)
        self.stdout.close()
        self.stderr.close()
        started = STARTED_MARK in out.splitlines()
        if returncode is None:
            return ChildResult(None, f"no result after {self.timeout:.0f} s (stopped)", started, environmental=True)
        if returncode == 0:
            try:
                value = json.loads(out.strip().splitlines()[-1])
                if isinstance(value, dict):
                    return ChildResult(value, None, started, environmental=False)
            except (ValueError, IndexError):
                pass
            return ChildResult(None, "exited without a result", started, environmental=False)
        reason = failure_reason(err, returncode)
        interrupted = returncode in (-signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL) \
            or reason.startswith("KeyboardInterrupt")
        return ChildResult(None, reason, started, environmental=interrupted)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        _RUNNING.discard(self)

    @staticmethod
    def _read(file) -> str:
        file.seek(0)
        return file.read().decode("utf-8", errors="replace")


@atexit.register
def _stop_running_children() -> None:
    """A check nobody collected (the run ended first) is not left running on the GPU."""
    for check in list(_RUNNING):
        check.stop()


def failure_reason(stderr: str, returncode: int) -> str:
    """The cause of a child's failure, in one line, from its stderr and exit status.

    In order: the final line of the last Python traceback (the exception that ended it); a C++ exception's
    ``what()`` (PyTorch aborting on a CUDA error); a ``Fatal Python error`` with the innermost frame (a
    signal, printed by faulthandler); a line naming a CUDA error; the last line. Warnings (as the warnings
    module prints them) are never the cause. The exit status (or the signal) comes last, in brackets.
    """
    lines = _without_warnings(stderr.splitlines())
    reason = _last_exception(lines) or _cpp_exception(lines) or _fatal_error(lines) or _cuda_error(lines) \
        or next((line.strip() for line in reversed(lines) if line.strip()), "")
    if returncode < 0:
        try:
            status = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            status = f"killed by signal {-returncode}"
    else:
        status = f"exit status {returncode}"
    return f"{reason[:300]} ({status})" if reason else status


def _without_warnings(lines: list[str]) -> list[str]:
    kept, skip_source = [], False
    for line in lines:
        if WARNING_LINE.match(line):
            skip_source = True
            continue
        if skip_source and line.startswith(" "):
            skip_source = False
            continue
        skip_source = False
        kept.append(line)
    return kept


def _last_exception(lines: list[str]) -> str | None:
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    for line in lines[starts[-1] + 1:]:
        if line.strip() and not line[0].isspace():
            return line.strip()
    return None


def _cpp_exception(lines: list[str]) -> str | None:
    found = [line.split("what():", 1)[1].strip() for line in lines if "what():" in line]
    return found[-1] if found and found[-1] else None


def _fatal_error(lines: list[str]) -> str | None:
    fatal = [i for i, line in enumerate(lines) if line.startswith("Fatal Python error:")]
    if not fatal:
        return None
    frame = next((line.strip() for line in lines[fatal[-1] + 1:] if line.strip().startswith("File ")), None)
    return lines[fatal[-1]].strip() + (f" at {frame}" if frame else "")


def _cuda_error(lines: list[str]) -> str | None:
    found = [line.strip() for line in lines if "CUDA error" in line or "illegal memory access" in line]
    return found[-1] if found else None
