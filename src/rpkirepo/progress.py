"""A progress line on a terminal for long work (first publish of a large repository).

Silent when stderr is not a terminal, so cron jobs and CI logs stay clean.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """Callable as ``progress(stage, done, total)``; redraws at most 10 times a second."""

    def __init__(self, stream: TextIO | None = None, *, force: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if force is None else force
        self._last = 0.0
        self._stage = ""
        self._start = time.monotonic()

    def close(self) -> None:
        """End an open progress line (one without a known total)."""
        if self.enabled and self._stage:
            self.stream.write("\n")
            self.stream.flush()
            self._stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if stage != self._stage:
            if self._stage:
                self.stream.write("\n")
            self._stage = stage
            self._start = now
        elif done < total and now - self._last < 0.1:
            return
        self._last = now
        if total <= 0:
            # Unknown total (a download without Content-Length): a running count and rate.
            rate = done / (now - self._start) if now > self._start else 0.0
            self.stream.write(f"\r{stage:>9} {done:,} ({rate:,.0f}/s)")
            self.stream.flush()
            return
        width = 30
        frac = done / total if total else 1.0
        bar = "#" * int(frac * width)
        rate = done / (now - self._start) if now > self._start else 0.0
        self.stream.write(f"\r{stage:>9} [{bar:<{width}}] {done}/{total} ({rate:,.0f}/s)")
        if done >= total:
            self.stream.write("\n")
            self._stage = ""
        self.stream.flush()
