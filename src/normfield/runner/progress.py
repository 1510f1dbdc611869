"""Progress of a sweep: a bar on a terminal, plain lines in a log, nothing when switched off.

On a terminal (``stderr.isatty()``, or a notebook) the runner draws a tqdm bar
that redraws itself with carriage returns. Written to a file or a CI log, those
redraws would pile up into one huge line, so there the runner prints one plain
line every :data:`LOG_INTERVAL_S` seconds while a sweep runs (and one when it
ends, if it printed any): short sweeps print nothing, long ones can be followed
with ``tail -f``. ``normfield reproduce`` adds one line per finished claim.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["make_progress", "LogProgress", "LOG_INTERVAL_S"]

LOG_INTERVAL_S = float(os.environ.get("NORMFIELD_PROGRESS_INTERVAL", "30"))


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class LogProgress:
    """Plain-line progress: ``name: 12/40 cells (4 cached), 31 s`` at most every ``interval`` seconds."""

    def __init__(self, total: int, initial: int, desc: str, *, interval: float | None = None,
                 stream: TextIO | None = None) -> None:
        self.total, self.done, self.cached, self.desc = total, initial, initial, desc
        self.interval = LOG_INTERVAL_S if interval is None else float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.printed = False

    def _line(self, now: float, end: bool = False) -> None:
        what = "done" if end else "cells"
        print(f"{self.desc}: {self.done}/{self.total} {what} ({self.cached} cached), {now - self.t0:.0f} s",
              file=self.stream, flush=True)
        self.printed, self.last = True, now

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval and self.done < self.total:
            self._line(now)

    def close(self) -> None:
        if self.printed or time.perf_counter() - self.t0 >= self.interval:
            self._line(time.perf_counter(), end=True)


def _interactive(stream: Any) -> bool:
    if "ipykernel" in sys.modules and stream is sys.stderr:  # a notebook: tqdm.auto draws a widget
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def make_progress(total: int, initial: int, desc: str, enabled: bool, stream: TextIO | None = None) -> Any:
    """The progress reporter of one sweep (``.update(n)``, ``.close()``): bar, log lines or nothing."""
    if not enabled:
        return _NoProgress()
    stream = stream if stream is not None else sys.stderr
    if _interactive(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False, unit="cell", file=stream)
    return LogProgress(total, initial, desc, stream=stream)
