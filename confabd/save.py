"""`confabctl save PATH|ID`: upload one transcript and its subagent files once, now.

Any agent's session: its provider is told by where the file is (local_sessions.provider_of), and
its provider object says which files belong to it and what rides on its chunks, as in a worker.

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

from . import local_sessions, providers
from .config import ConfigError, Settings, load_backend_config
from .engine import SessionSync, TrackedFile
from .errors import ConfabdError
from .records import validate_external_id
from .sinks import open_sink, retry_until
from .sinks.base import SinkError

SAVE_RETRY_SECONDS = 120


def find_transcript(target: str, home: str) -> str:
    """A path as given, or a session ID looked up under ~/.claude/projects/*/<ID>.jsonl."""
    if os.sep in target or target.endswith(".jsonl"):
        if not os.path.isfile(target):
            raise ConfabdError(f"{target}: no such transcript file")
        return os.path.abspath(target)
    validate_external_id(target)
    matches = sorted(glob.glob(os.path.join(home, ".claude", "projects", "*", glob.escape(target) + ".jsonl")))
    if not matches:  # another agent's session
        matches = sorted(s.path for s in local_sessions.local_sessions(home) if s.external_id == target)
    if not matches:
        raise ConfabdError(f"no transcript for session {target} under {home}/.claude/projects/ "
                           "or of any other agent (`confabctl list` shows them)")
    return matches[-1]


EXIT_INTERRUPTED = 130


def run_save(target: str, home: str, settings: Settings, progress: Optional[bool] = None,
             out: TextIO = sys.stdout, err: TextIO = sys.stderr, line=None) -> int:
    """Save one session; 0, 1 (it failed: said on `err`) or EXIT_INTERRUPTED (Ctrl-C: said on `err`).

    `line` (a ProgressLine) is shared by the sessions of one `save --all`; without
    it, one is drawn for this session when `progress` (default: `err` is a terminal)."""
    try:
        path = find_transcript(target, home)
        provider, external_id = local_sessions.provider_of(path, home)  # by where the file is
        validate_external_id(external_id)
        if line is None and _wants_bar(progress, err):
            from .progress import ProgressLine

            line = ProgressLine(err, session_size(path))
        with open(path, "rb") as lock:
            _refuse_if_live(lock, path)
            return _upload(path, external_id, home, settings, _Reporter(line) if line else None, out, err,
                           providers.get(provider))
    except (ConfabdError, ConfigError, SinkError, ValueError, OSError) as exc:
        if line:
            line.clear()
        print(f"confabctl save: {exc}", file=err)
        return 1


def session_size(path: str) -> int:
    """Bytes of a session's transcript and of the agent files in its subagents/ dir, as they are now."""
    total = 0
    stem = path[: -len(".jsonl")] if path.endswith(".jsonl") else path
    for name in [path] + sorted(glob.glob(os.path.join(glob.escape(stem), "subagents", "agent-*.jsonl"))):
        try:
            total += os.path.getsize(name)
        except OSError:
            pass
    return total


def _refuse_if_live(lock, path: str) -> None:
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfabdError(
            f"{path} is being synced by a running worker; `confabctl stop` it first or let it finish"
        ) from None


def _upload(path: str, external_id: str, home: str, settings: Settings, bar, out: TextIO, err: TextIO,
            provider: Optional[providers.Provider] = None) -> int:
    from .bindings import backend_for, session_config_dir
    from .redact import Redactor

    backend = backend_for(load_backend_config(home), session_config_dir(os.path.abspath(path), home))
    sink = open_sink(settings, backend, home)

    redactor = Redactor.from_config(backend.redaction)
    engine = SessionSync(
        external_id, path, sink,
        redact=redactor.redact_line if redactor else None,
        redact_lines=redactor.redact_lines if redactor else None,
        oversized_lines=settings.oversized_lines,
        on_chunk=bar.chunk if bar else None,
        on_read=bar.read if bar else None,
        provider=provider,  # its files, sidecars and metadata (the provider's layout and facts)
    )
    engine.hurry = True  # one upload, now: no chunk spacing
    started = time.monotonic()
    try:
        sent = retry_until(engine.sync_until_idle, SAVE_RETRY_SECONDS)
    except KeyboardInterrupt:
        if bar:
            bar.line.clear()
        held = sum(engine.server_lines().values())
        print(f"confabctl save: interrupted; the backend holds {held} line(s) of {external_id} as far as this "
              f"save heard. Running the same command again resumes from what it holds: no line is sent twice.",
              file=err)
        return EXIT_INTERRUPTED
    finally:
        sink.close()
    if bar:
        bar.line.clear()
        bar.line.end_session(session_size(path))
    lines = engine.server_lines()
    where = "the local archive" if sink.kind == "archive" else backend.backend_url
    print(
        f"saved {external_id}: {sent} new line(s) sent, {sum(lines.values())} line(s) in "
        f"{len(lines)} file(s) held by {where} (session {engine.session_id}) in {time.monotonic() - started:.1f} s",
        file=out, flush=True,
    )
    for error in engine.errors():
        print(f"warning: {error}", file=out)
    return 1 if engine.errors() else 0


def _wants_bar(progress: Optional[bool], err: TextIO) -> bool:
    return progress if progress is not None else err.isatty()


class _Reporter:
    """The engine's callbacks into the progress line: bytes read for the chunk being
    built (so the line moves within a 14 MiB chunk), and each confirmed chunk."""

    def __init__(self, line):
        self.line = line
        self.confirmed: dict[str, int] = {}  # file name -> byte offset the backend has confirmed
        self.pending = 0  # bytes read since the last confirmed chunk

    def read(self, f: TrackedFile, size: int) -> None:
        self.pending += size
        self.line.position(sum(self.confirmed.values()) + self.pending, f.name)

    def chunk(self, f: TrackedFile, count: int) -> None:
        self.confirmed[f.name] = f.reader.cursor.offset
        self.pending = 0
        self.line.position(sum(self.confirmed.values()), f.name, lines=count, force=True)
