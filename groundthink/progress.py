"""Progress of long commands: a tqdm bar on a usable terminal, plain status lines everywhere else.

A terminal is usable when the stream is a tty at least ``MIN_COLUMNS`` wide and one line high. A
pseudo-terminal can report a size of 0 x 0 (some job runners, ``script`` sessions, editors' embedded
terminals); tqdm sizes its bar to one less, -1, and then prints nothing at all, so a command looked dead. Such a stream, a pipe or a file gets plain lines instead:
one after the first unit of work (the first rate and ETA), then one every ``interval`` seconds from a
background timer (so a single slow unit still gets a line), and a closing line with the total time.

``Progress`` counts any unit (steps, tokens, runs); ``count_model_tokens`` counts the tokens a model
reads, so a command made of many different passes (``eval``, ``diagnose``) gets one honest ETA.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import threading
import time

MIN_COLUMNS = 40        # narrower than this, a bar cannot show count, rate and ETA
PLAIN_INTERVAL_S = 15.0  # plain lines: at most this long between two lines
# A backward pass costs this many times its forward (measured on a CPU for the char model: ~1.2; on a
# GPU ~2): how count_model_tokens weighs the tokens of a training step against those of a forward pass.
BACKWARD_WEIGHT = 1.5


def terminal_size(stream) -> tuple[int, int]:
    """(columns, lines) of the terminal behind ``stream``; (0, 0) when it is not a terminal."""
    try:
        if not stream.isatty():
            return 0, 0
        size = os.get_terminal_size(stream.fileno())
        return size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        return 0, 0


def usable_terminal(stream) -> bool:
    """A terminal a tqdm bar shows on: wide enough, and with at least one line (tqdm sizes itself to the
    reported size minus one, and draws nothing in -1 columns or -1 lines)."""
    columns, lines = terminal_size(stream)
    return columns >= MIN_COLUMNS and lines >= 1


def format_duration(seconds: float | None) -> str:
    """``0:42``, ``12:05``, ``3:02:10``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_count(value: float) -> str:
    """``950``, ``9,999``, ``12.3k``, ``4.56M``: short enough for a status line."""
    for threshold, scale, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.3g}"


def format_rate(per_second: float, unit: str) -> str:
    if per_second <= 0:
        return f"? {unit}/s"
    number = format_count(per_second) if per_second >= 100 else f"{per_second:.3g}"
    return f"{number} {unit}/s"


class Progress:
    """``total`` units of work, counted with ``update(n)``; the bar or the plain lines go to ``stream``.

    ``bar``: None = a tqdm bar when ``stream`` is a usable terminal; False = plain lines always. ``interval``:
    seconds between plain lines (0: a line at every update, no timer). ``closing_line``: print the total
    time at ``close()`` (plain lines only). ``quiet``: print nothing; the caller shows ``status()`` itself.
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, total: float, desc: str, unit: str = "it", initial: float = 0, stream=None,
                 bar: bool | None = None, interval: float = PLAIN_INTERVAL_S, closing_line: bool = True,
                 quiet: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.n, self.start_n, self.postfix = initial, initial, ""
        self.interval, self.closing_line, self.quiet = interval, closing_line, quiet
        self.started = time.perf_counter()
        self.last_line = None           # when the last plain line was printed (None: not yet)
        self.closed = False
        self.lock = threading.RLock()
        self.bar = None
        if bar is None:
            bar = not quiet and usable_terminal(self.stream)
        if bar:
            from tqdm import tqdm

            # The count, the elapsed time, the ETA and the rate come first, so a narrow terminal trims the
            # postfix (loss, phase) rather than the ETA.
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                            dynamic_ncols=True, leave=True, unit_scale=unit == "tok",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                       "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        self._stop = threading.Event()
        self._timer = None
        if self.bar is None and interval > 0 and not quiet:
            self._timer = threading.Thread(target=self._beat, name=f"progress:{desc}", daemon=True)
            self._timer.start()
            atexit.register(self.close)  # a timer never prints into an interpreter that is shutting down

    # ---- counting ---------------------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        with self.lock:
            self.n += n
            if self.closed:
                return
            if self.bar is not None:
                self.bar.update(n)
            elif not self.quiet and (self.last_line is None or time.perf_counter() - self.last_line >= self.interval):
                self._line()

    def set_total(self, total: float) -> None:
        """A better estimate of the total (e.g. a loop that stopped early)."""
        with self.lock:
            self.total = total
            if self.bar is not None:
                self.bar.total = total
                self.bar.refresh()

    def set_postfix(self, text: str) -> None:
        """What is shown after the numbers: the latest loss, the current phase."""
        with self.lock:
            self.postfix = text
            if self.bar is not None:
                self.bar.set_postfix_str(text, refresh=False)

    def write(self, line: str, file=None) -> None:
        """Print ``line`` (to stdout by default) without tearing the bar."""
        with self.lock:
            target = file if file is not None else sys.stdout
            if self.bar is not None and not self.closed:
                self.bar.write(line, file=target)
            else:
                print(line, file=target, flush=True)

    # ---- the status line ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def rate(self) -> float:
        """Units per second over this session (``initial`` units were done before it)."""
        elapsed = self.elapsed()
        return (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if rate <= 0 or not self.total:
            return None
        return max(self.total - self.n, 0) / rate

    def status(self) -> str:
        """``desc: 120/1,000 steps (12%), 2.1 steps/s, elapsed 0:57, ETA 6:59; postfix``."""
        if self.total:
            done = f"{format_count(self.n)}/{format_count(self.total)} {self.unit} ({self.n / self.total:.0%})"
        else:
            done = f"{format_count(self.n)} {self.unit}"
        text = (f"{self.desc}: {done}, {format_rate(self.rate(), self.unit)}, elapsed "
                f"{format_duration(self.elapsed())}, ETA {format_duration(self.eta())}")
        return text + (f"; {self.postfix}" if self.postfix else "")

    def _line(self) -> None:
        print(self.status(), file=self.stream, flush=True)
        self.last_line = time.perf_counter()

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0)):
            with self.lock:
                if self.closed:
                    return
                since = time.perf_counter() - (self.last_line if self.last_line is not None else self.started)
                if since >= self.interval:
                    self._line()

    # ---- the end -----------------------------------------------------------------------------------
    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self._stop.set()
            if self.bar is not None:
                self.bar.close()
            elif self.closing_line and not self.quiet:
                print(f"{self.desc}: {format_count(self.n)} {self.unit} in {format_duration(self.elapsed())} "
                      f"({format_rate(self.rate(), self.unit)})" + (f"; {self.postfix}" if self.postfix else ""),
                      file=self.stream, flush=True)
        if self._timer is not None:
            atexit.unregister(self.close)
            if threading.current_thread() is not self._timer:
                self._timer.join()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def announce(text: str, stream=None) -> None:
    """One line saying what a phase without a counter is doing, printed as it starts."""
    print(text, file=stream if stream is not None else sys.stderr, flush=True)


@contextlib.contextmanager
def count_model_tokens(model, progress: Progress, backward_weight: float = BACKWARD_WEIGHT):
    """Count every token ``model`` reads (its first argument, ``[B, T]`` ids) on ``progress``; a backward
    pass through the output adds ``backward_weight`` times its tokens.

    A plain function is registered (not a bound method), so ``copy.deepcopy(model)`` (a short training
    loop on a copy) shares the counter instead of copying it.
    """
    def counted(module, args, kwargs, output):
        ids = args[0] if args else kwargs.get("input_ids")
        tokens = getattr(ids, "numel", lambda: 0)()
        progress.update(tokens)
        logits = getattr(output, "logits", None)
        if backward_weight and logits is not None and logits.requires_grad:
            logits.register_hook(lambda grad: progress.update(tokens * backward_weight))

    handle = model.register_forward_hook(counted, with_kwargs=True)
    try:
        yield progress
    finally:
        handle.remove()
