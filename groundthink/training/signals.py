"""SIGINT / SIGTERM during training: the first one asks the run to stop after the current step (with a
checkpoint); a second one aborts at once.

Under torchrun a terminal's Ctrl-C reaches each rank twice (from the terminal and forwarded by torchrun), so
with several ranks signals closer together than ``repeat_after_s`` count as one request. The ranks agree on
a request at the next log step (see the trainer), so all stop at the same step.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time

REPEAT_SIGNAL_S = 1.0


class StopRequests:
    def __init__(self, repeat_after_s: float = 0.0):
        self.repeat_after_s = repeat_after_s
        self.signal: int | None = None
        self.received_at = 0.0

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signal is None:
            self.signal, self.received_at = signum, now
        elif now - self.received_at > self.repeat_after_s:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        """Handle both signals within this block (only the main thread can install handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
