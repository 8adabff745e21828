"""Where a run's wall time goes: a clock per phase (startup: the process's imports before the run; setup:
data, model, optimizer; kernel compilation; graph capture; steps; evaluation; checkpoints), printed at the
end of a run and written to ``summary.json``.

Phases nest by subtraction: a phase started inside another pauses the outer one, so the phases add up to
the wall time between the clock's start and ``report()`` (the rest is ``other``).
"""
from __future__ import annotations

import contextlib
import time

PHASES = ("startup", "setup", "compile", "capture", "steps", "eval", "checkpoint", "other")


class PhaseClock:
    def __init__(self, timer=time.perf_counter):
        self.timer = timer
        self.started = timer()
        self.seconds = {name: 0.0 for name in PHASES}
        self._stack: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        now = self.timer()
        if self._stack:
            outer, since = self._stack[-1]
            self.seconds[outer] += now - since
        self._stack.append((name, now))
        try:
            yield
        finally:
            name, since = self._stack.pop()
            now = self.timer()
            self.seconds[name] += now - since
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], now)

    def add_before_start(self, name: str, since: float) -> None:
        """Charge the time from ``since`` (a ``perf_counter`` reading before the clock started) to ``name``."""
        seconds = max(self.started - since, 0.0)
        self.seconds[name] += seconds
        self.started -= seconds

    def move(self, seconds: float, source: str, target: str) -> None:
        """Re-attribute time measured inside ``source`` (e.g. the first step's kernel compilation)."""
        seconds = min(max(seconds, 0.0), self.seconds[source])
        self.seconds[source] -= seconds
        self.seconds[target] += seconds

    def report(self) -> dict[str, float]:
        """Seconds per phase so far, with ``wall`` and ``other`` (time in no phase)."""
        wall = self.timer() - self.started
        measured = {name: round(value, 3) for name, value in self.seconds.items() if name != "other"}
        measured["other"] = round(max(wall - sum(self.seconds.values()), 0.0) + self.seconds["other"], 3)
        measured["wall"] = round(wall, 3)
        return measured

    def line(self) -> str:
        report = self.report()
        parts = [f"{name} {report[name]:.1f}s" for name in PHASES if report.get(name, 0) >= 0.05]
        return f"time: {report['wall']:.1f}s = " + ", ".join(parts)

    def state_dict(self) -> dict:
        return dict(self.seconds)
