"""`confabctl save`'s one progress line on a terminal: bytes and lines, rate, time left.

    [2/7] 45.1 of 200.0 MB  23%  41,230 lines  85.3 MB/s  0:02 left  <file name>

Redrawn in place with a carriage return, never wider than the terminal (fields are
dropped from the right when it is narrow, and the width is asked again at every
redraw, so a resized window is followed). At most 10 redraws a second. Only on a
terminal: elsewhere `save` prints nothing but its summary. Its own forty lines rather
than tqdm: nothing to import on the way, and tqdm is not a dependency.
"""

from __future__ import annotations

import os
import time
from typing import Optional, TextIO

REDRAW_S = 0.1
MB = 1_000_000


class ProgressLine:
    """Overall progress of one save or of `save --all` (several sessions, one line)."""

    def __init__(self, stream: TextIO, total_bytes: int, clock=time.monotonic):
        self.stream = stream
        self.total_bytes = max(0, total_bytes)
        self.clock = clock
        self.started = clock()
        self.done_bytes = 0  # of sessions finished before the current one
        self.session_bytes = 0  # of the current session
        self.lines = 0  # confirmed by the backend, over the whole run
        self.label = ""
        self.prefix = ""  # "[2/7] " with several sessions
        self._drawn_at = float("-inf")
        self._shown = False

    # -- what the save reports ---------------------------------------------------

    def start_session(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.session_bytes = 0

    def end_session(self, size: int) -> None:
        """A session is done: its bytes count as done, whatever was read of them."""
        self.done_bytes += size
        self.session_bytes = 0

    def position(self, session_bytes: int, label: str = "", lines: int = 0, force: bool = False) -> None:
        """How far into the current session (bytes read, across its files), `lines` more confirmed."""
        self.session_bytes = max(self.session_bytes, session_bytes)
        self.lines += lines
        self.label = label or self.label
        now = self.clock()
        if force or now - self._drawn_at >= REDRAW_S:
            self._drawn_at = now
            self.draw(now)

    # -- the line ----------------------------------------------------------------

    def fields(self, now: float) -> list[str]:
        done = min(self.done_bytes + self.session_bytes, self.total_bytes or 1 << 62)
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        fraction = done / self.total_bytes if self.total_bytes else 1.0
        left = (self.total_bytes - done) / rate if rate > 0 and done else None
        return [
            f"{self.prefix}{done / MB:.1f} of {self.total_bytes / MB:.1f} MB",
            f"{fraction:4.0%}",
            f"{self.lines:,} lines",
            f"{rate / MB:.1f} MB/s",
            f"{_clock(left)} left" if left is not None else "-:-- left",
            self.label,
        ]

    def render(self, width: int, now: Optional[float] = None) -> str:
        """The line for a terminal `width` columns wide: whole fields, as many as fit."""
        text = ""
        for field in self.fields(self.clock() if now is None else now):
            candidate = f"{text}  {field}" if text else field
            if len(candidate) > width - 1:  # the last column stays free: no wrap on any terminal
                if not text:
                    text = candidate[: max(0, width - 1)]
                break
            text = candidate
        return text

    def draw(self, now: Optional[float] = None) -> None:
        self.stream.write("\r" + self.render(_width(self.stream), now) + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Take the line away (before a summary is printed, and at the end)."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
