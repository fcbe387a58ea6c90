"""Progress of long work on a terminal: done/total, rate, time left; a summary at the end.

A bank loads millions of CRM rows, replays a day of recordings through a rule set, or
runs the benchmarks: work of minutes, where a silent terminal reads as a hang. On a
terminal (a TTY) one line is rewritten in place at most every `interval_s`; in a log
(CI, `nohup`, a pipe) a plain line every `log_interval_s` instead, so logs stay short
and every line means something. Both go to stderr, leaving stdout to what the command
reports. The clock is injectable (`clock`) so the wording is tested without waiting.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "duration", "line"]


def duration(seconds: float) -> str:
    """A short human duration.

    >>> duration(4.2), duration(75), duration(3725), duration(-1)
    ('4s', '1m15s', '1h02m', '0s')
    """
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def line(label: str, done: int, total: int | None, elapsed_s: float, unit: str) -> str:
    """One progress line.

    >>> line("import", 250_000, 1_000_000, 10.0, "rows")
    'import: 250,000/1,000,000 rows (25.0%), 25,000 rows/s, 30s left'
    >>> line("replay", 40, None, 2.0, "batches")
    'replay: 40 batches, 20 batches/s'
    """
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    text = f"{label}: {done:,}"
    if total:
        text += f"/{total:,} {unit} ({100 * done / total:.1f}%)"
    else:
        text += f" {unit}"
    text += f", {rate:,.0f} {unit}/s"
    if total and rate > 0 and done < total:
        text += f", {duration((total - done) / rate)} left"
    return text


class Progress:
    """Counts work done and shows it; `close()` prints and returns the summary."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "items",
        stream: TextIO | None = None,
        interval_s: float = 0.25,
        log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._every = interval_s if self._tty else log_interval_s
        self._clock = clock
        self._started = clock()
        self._shown = self._started
        self._width = 0  # of the last line drawn in place (to blank what it leaves)

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._shown >= self._every:
            self._shown = now
            self._show(line(self.label, self.done, self.total, now - self._started, self.unit))

    def _show(self, text: str) -> None:
        if self._tty:
            pad = " " * max(0, self._width - len(text))
            self.stream.write(f"\r{text}{pad}")
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, summary: str | None = None) -> str:
        """End the progress line; print `summary` (or the final count, rate and time)."""
        elapsed = self.elapsed_s
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = summary or (
            f"{self.label}: {self.done:,} {self.unit} in {duration(elapsed)} ({rate:,.0f}/s)"
        )
        if self._tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
        return text
