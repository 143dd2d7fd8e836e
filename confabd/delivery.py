"""What a worker's sink did, counted where it happens: the numbers behind status and metrics.

`MeteredSink` wraps a sink (as the worker's `_Heartbeating` does) and keeps a
`Tally`: lines, bytes and chunks the sink confirmed, errors by kind
(sinks/causes.py `error_kind`), and the outcome of the last request that
reached or failed to reach it, for the master's per-backend reachability
(backend_health.py). The tally belongs to one worker process and only grows;
the master turns what each report adds into its totals (metrics.py), so a
restarted worker starting again from zero loses nothing and counts nothing twice.

`sink_target` names where lines go, in words a person recognises: the
backend's URL, or the archive's path.
"""

from __future__ import annotations

import time

import msgspec

from .sinks.base import SinkError
from .sinks.causes import error_kind


class Tally(msgspec.Struct, kw_only=True):
    lines: int = 0  # lines the sink confirmed (chunks answered with their last_synced_line)
    bytes: int = 0  # bytes of those lines as sent, each with its newline
    chunks: int = 0
    errors: dict[str, int] = {}  # error_kind -> count
    reached_at: float = 0.0  # time.time() of the last request the sink answered (any answer)
    unreachable_at: float = 0.0  # time.time() the last request that could not reach it was started
    unreachable: str = ""  # why, in a few words, when the last request could not reach it; "" otherwise


class MeteredSink:
    """A sink whose calls are counted in `tally`; everything else is the sink's own."""

    _METERED = ("init", "upload_chunk", "send_event")

    def __init__(self, sink, tally: Tally):
        self._sink, self._tally = sink, tally

    def __getattr__(self, name):
        value = getattr(self._sink, name)
        if name not in self._METERED:
            return value

        def call(*args, **kwargs):
            started = time.time()
            try:
                result = value(*args, **kwargs)
            except SinkError as exc:
                self._failed(exc, started)
                raise
            self._answered()
            if name == "upload_chunk":
                self._delivered(args[0] if args else kwargs["chunk"])
            return result
        return call

    def _delivered(self, chunk) -> None:
        t = self._tally
        t.chunks += 1
        t.lines += len(chunk.lines)
        t.bytes += sum(map(len, chunk.lines)) + len(chunk.lines)

    def _answered(self) -> None:
        self._tally.reached_at = time.time()
        self._tally.unreachable = ""

    def _failed(self, exc: SinkError, started: float) -> None:
        t = self._tally
        kind = error_kind(exc)
        t.errors = {**t.errors, kind: t.errors.get(kind, 0) + 1}
        if getattr(exc, "unreachable", ""):
            # When it was tried, not when it failed: a refusal from just before the backend came
            # back must not outdate an answer another session got since (backend_health.py).
            t.unreachable_at = started
            t.unreachable = exc.unreachable
        else:  # it answered, with an error: reached all the same
            self._answered()


def sink_target(settings, backend, home: str) -> str:
    """Where this user's lines go: the backend URL, or `archive:<path>`."""
    from .config import choose_sink
    from .paths import default_archive_path

    if choose_sink(settings, backend) == "archive":
        return "archive:" + (settings.archive_path or default_archive_path(home))
    return backend.backend_url or "(no backend_url)"
