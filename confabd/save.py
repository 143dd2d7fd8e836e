"""`confabctl save PATH|ID`: upload one transcript and its subagent files once, now.

The same engine as the workers, so the same exactly-once rules: a transcript
already partly on the backend continues from the backend's line count. While a
worker syncs the session (it holds an flock on the transcript), save refuses
rather than race it.
"""

from __future__ import annotations

import fcntl
import glob
import os
import sys
import time
from typing import Optional, TextIO

import backoff

from .config import ConfigError, Settings, load_backend_config
from .engine import SessionSync, TrackedFile
from .errors import ConfabdError
from .records import validate_external_id
from .sinks import open_sink, retry_wait
from .sinks.base import SinkError, Unavailable

SAVE_RETRY_SECONDS = 120


def find_transcript(target: str, home: str) -> str:
    """A path as given, or a session ID looked up under ~/.claude/projects/*/<ID>.jsonl."""
    if os.sep in target or target.endswith(".jsonl"):
        if not os.path.isfile(target):
            raise ConfabdError(f"{target}: no such transcript file")
        return os.path.abspath(target)
    validate_external_id(target)
    matches = sorted(glob.glob(os.path.join(home, ".claude", "projects", "*", glob.escape(target) + ".jsonl")))
    if not matches:
        raise ConfabdError(f"no transcript for session {target} under {home}/.claude/projects/")
    return matches[-1]


def run_save(target: str, home: str, settings: Settings, progress: Optional[bool] = None,
             out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        path = find_transcript(target, home)
        external_id = validate_external_id(os.path.basename(path)[: -len(".jsonl")])
        with open(path, "rb") as lock:
            _refuse_if_live(lock, path)
            return _upload(path, external_id, home, settings, _ProgressBar(err) if _wants_bar(progress, err) else None, out)
    except (ConfabdError, ConfigError, SinkError, ValueError, OSError) as exc:
        print(f"confabctl save: {exc}", file=err)
        return 1


def _refuse_if_live(lock, path: str) -> None:
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfabdError(
            f"{path} is being synced by a running worker; `confabctl stop` it first or let it finish"
        ) from None


def _upload(path: str, external_id: str, home: str, settings: Settings, bar, out: TextIO) -> int:
    from .bindings import backend_for, session_config_dir
    from .redact import Redactor

    backend = backend_for(load_backend_config(home), session_config_dir(os.path.abspath(path), home))
    sink = open_sink(settings, backend, home)

    redactor = Redactor.from_config(backend.redaction)
    engine = SessionSync(
        external_id, path, sink,
        redact=redactor.redact_line if redactor else None,
        oversized_lines=settings.oversized_lines,
        on_chunk=bar.advance if bar else None,
    )
    engine.hurry = True  # one upload, now: no chunk spacing
    started = time.monotonic()
    try:
        retrying = backoff.on_exception(retry_wait, Unavailable, max_time=SAVE_RETRY_SECONDS, jitter=None)
        sent = retrying(engine.sync_until_idle)()
    finally:
        sink.close()
        if bar:
            bar.done()
    lines = engine.server_lines()
    where = "the local archive" if sink.kind == "archive" else backend.backend_url
    print(
        f"saved {external_id}: {sent} new line(s) sent, {sum(lines.values())} line(s) in "
        f"{len(lines)} file(s) held by {where} (session {engine.session_id}) in {time.monotonic() - started:.1f} s",
        file=out,
    )
    for error in engine.errors():
        print(f"warning: {error}", file=out)
    return 1 if engine.errors() else 0


def _wants_bar(progress: Optional[bool], err: TextIO) -> bool:
    return progress if progress is not None else err.isatty()


class _ProgressBar:
    """A one-line progress bar on a terminal: how far into the current file, lines sent."""

    WIDTH = 30

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.sent = 0

    def advance(self, f: TrackedFile, count: int) -> None:
        self.sent += count
        try:
            fraction = min(1.0, f.reader.cursor.offset / max(1, os.path.getsize(f.path)))
        except OSError:
            fraction = 0.0
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r\x1b[K[{bar}] {fraction:4.0%} {f.name} line {f.server_line} ({self.sent} sent)")
        self.stream.flush()

    def done(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()
