"""A session worker: one process that syncs one Claude Code session until it is finished.

Life of a worker (see worker_api.py for the contract with the master):
  1. write its State (so a crash of anything leaves a record to adopt);
  2. wait for the transcript (Claude Code creates it with the first request);
  3. take an exclusive lock on the transcript: exactly one uploader per session;
  4. sync every interval + jitter, backing off while the sink is unavailable;
  5. on Finish: final sync bounded by the shutdown timeout, a short linger for
     lines written just after SessionEnd, the `session_end` event, then delete
     State and inbox.
It may be killed (-9) at any instant: the sink's line numbers are the truth,
so the next worker resumes from them with nothing lost or sent twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import socket
import sys
import time
from multiprocessing.connection import wait as wait_for_ready
from typing import Optional

import backoff
import msgspec

from . import privileges, worker_api as api
from .worker_api import Phase
from .config import ConfigError, load_backend_config
from .engine import SessionSync
from .errors import CorruptRecord
from .records import HookInput, InboxRecord, State
from .sinks import open_sink, retry_wait
from .sinks.base import AuthFailed, SessionGone, SinkError, Unavailable
from .store import SyncDir, utc_now

log = logging.getLogger("confabd.worker")

SESSION_GONE_LIMIT = 3  # 404s in a row before the session is finished locally
LOCK_POLL_S = 0.1
LINGER_POLL_S = 0.05


def _sizes(engine: SessionSync) -> dict[str, int]:
    sizes = {}
    for name, f in engine.files.items():
        try:
            sizes[name] = os.stat(f.path).st_size
        except OSError:
            sizes[name] = -1
    return sizes


class _Heartbeating:
    """A sink that lets the master hear from us before each request: a long sync (a big
    backlog is many chunks in one cycle) must not look like a hung worker. Attributes and
    calls are the sink's own."""

    def __init__(self, sink, beat):
        self._sink, self._beat = sink, beat

    def __getattr__(self, name):
        value = getattr(self._sink, name)
        if not callable(value) or name == "close":
            return value

        def call(*args, **kwargs):
            self._beat()
            return value(*args, **kwargs)
        return call


class MasterGone(Exception):
    """The pipe to the master hit EOF: the master died."""


MASTER_ONLY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")  # systemd talks to the master


def worker_main(spec: api.WorkerSpec, conn, inherited: list[int]) -> None:
    """The master's Process target: the first code in a freshly forked worker.

    Everything a worker must shed or become, in one place: the master's signal
    setup, its systemd variables, its fds, then (system mode) root itself.
    """
    privileges.reset_child_signals()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the master, which sends Finish
    for name in MASTER_ONLY_VARIABLES:
        os.environ.pop(name, None)
    _shed_fds(inherited, keep=conn.fileno())
    _log_to_inherited_streams()
    privileges.preload_worker_modules()  # the master did it; a no-op unless started some other way
    privileges.become(spec.run_as)
    run_worker(spec, conn)


def _log_to_inherited_streams() -> None:
    """Log through the master's open log file, not its path.

    The master's WatchedFileHandler stats the path before every record (to reopen it after
    logrotate); a system-mode worker, as its user, may not even reach that path (root's
    /var/log/confabd), and crashed on its first record. The fd the master opened (O_APPEND,
    so records of several processes never overwrite each other) works whoever we are; a
    worker keeps writing to it after a rotation until it restarts. The master alone reopens.
    """
    root = logging.getLogger()
    for i, handler in enumerate(root.handlers):
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.FileHandler) and stream is not None:
            plain = logging.StreamHandler(stream)
            plain.setFormatter(handler.formatter)
            plain.setLevel(handler.level)
            root.handlers[i] = plain


def _shed_fds(inherited: list[int], keep: int) -> None:
    """dup2 /dev/null over the master's fds (rather than close them) so no stale object
    of the master can ever close a file the worker opens later under the same number."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in inherited:
        if fd != devnull and fd != keep:
            try:
                os.dup2(devnull, fd, inheritable=False)
            except OSError:
                pass
    os.close(devnull)


def run_worker(spec: api.WorkerSpec, conn) -> None:
    """Sync one session to its end; exits with a worker_api exit code."""
    sys.exit(SessionWorker(spec, conn).run())


class SessionWorker:
    def __init__(self, spec: api.WorkerSpec, conn):
        self.spec = spec
        self.conn = conn
        self.settings = spec.settings
        self.sync_dir = SyncDir(spec.sync_dir)
        self.state: State = State(external_id=spec.external_id, transcript_path=spec.transcript_path)
        self.engine: Optional[SessionSync] = None
        self.lock_fd: Optional[int] = None
        self.finish_reason = spec.finish_reason  # the master's word: it knows why
        self.end_hook_input = spec.end_hook_input  # SessionEnd input that reached us without the inbox
        self.suspend = False  # SIGTERM: final flush, keep State, exit (a master will adopt it)
        self.reload = False
        self.gone_count = 0
        self.last_error = ""
        self.master_pid = os.getppid()
        self._saved_state = b""
        self.last_sync_at = ""
        self._last_word = 0.0  # monotonic: the last message to the master (heartbeats)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- main ----------------------------------------------------------------

    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self._start_state()
            if not self._wait_for_transcript():
                return self._finish_without_transcript()
            self._sync_loop()
            if self.suspend:
                return self._suspend()
            return self._finish()
        except MasterGone:
            log.info("%s: master is gone; saving State for the next master", self.spec.external_id)
            self._save_state()
            return api.EXIT_MASTER_GONE

    def _sync_loop(self) -> None:
        self._set_phase(Phase.CONNECTING)
        while not self._stopping():
            self._cycle()
            if self.gone_count >= SESSION_GONE_LIMIT:
                self.finish_reason = api.SESSION_DELETED
                return
            self._wait_commands(self._next_interval())
            self._check_inbox()

    def _check_inbox(self) -> None:
        """A SessionEnd hook that could not reach the master still left its record here."""
        if os.path.exists(self.state.inbox_path) and self._inbox_has_session_end():
            self.finish_reason = self.finish_reason or api.SESSION_END_IN_INBOX

    def _cycle(self) -> None:
        """One sync pass, with backoff while the sink is unavailable (bounded by the interval)."""
        try:
            engine = self._engine()
            sent = self._sync_with_backoff(engine, max_time=self._retry_budget())
            self.gone_count = 0
            self._note_success(sent)
        except AuthFailed as exc:
            self._drop_engine(f"{exc}; will re-read credentials next cycle")
        except SessionGone as exc:
            self.gone_count += 1
            self._note_error(f"{exc} ({self.gone_count}/{SESSION_GONE_LIMIT})")
        except Unavailable as exc:
            self._note_error(f"backend unavailable: {exc}")
        except (ConfigError, SinkError, CorruptRecord) as exc:
            self._drop_engine(str(exc))
        except OSError as exc:
            self._note_error(f"cannot read {exc.filename or 'a file'}: {exc.strerror}")
        self._save_state()
        self._report()

    def _sync_with_backoff(self, engine: SessionSync, max_time: float) -> int:
        retrying = backoff.on_exception(
            retry_wait, Unavailable, max_time=max_time, jitter=None,
            giveup=lambda exc: self._interrupted(), on_backoff=self._on_backoff,
        )
        return retrying(engine.sync_until_idle)()

    # -- finishing -----------------------------------------------------------

    def _finish(self) -> int:
        """Final sync, linger, session_end, cleanup. Bounded by the shutdown timeout."""
        eid = self.spec.external_id
        log.info("%s: finishing (%s)", eid, self.finish_reason)
        self.state.finishing = True
        self._set_phase(Phase.FINISHING)
        deadline = time.monotonic() + self.settings.shutdown_timeout_ms / 1000
        if self.gone_count >= SESSION_GONE_LIMIT:
            return self._cleanup()
        try:
            engine = self._engine()
            self._sync_with_backoff(engine, max_time=max(0.0, deadline - time.monotonic()))
            self._linger(engine, deadline)
            self._send_session_end(engine)
        except (SinkError, ConfigError, OSError) as exc:
            self._note_error(f"final sync incomplete: {exc}")
            log.warning("%s: final sync incomplete, State kept for a retry: %s", eid, exc)
            self._save_state()
            self._report()
            return api.EXIT_UNFINISHED
        return self._cleanup()

    def _linger(self, engine: SessionSync, deadline: float) -> None:
        """Claude Code may write a last line just after SessionEnd (seen: `cost-state` ~115 ms
        after /clear). Wait until the files stay unchanged for `finish_linger_ms`, syncing
        what arrives, bounded by ten quiet periods and the shutdown deadline."""
        quiet = self.settings.finish_linger_ms / 1000
        if quiet <= 0:
            return
        end = min(deadline, time.monotonic() + 10 * quiet)
        sizes = _sizes(engine)
        calm_since = time.monotonic()
        while time.monotonic() - calm_since < quiet and time.monotonic() < end:
            time.sleep(min(LINGER_POLL_S, quiet))
            now_sizes = _sizes(engine)
            if now_sizes != sizes:
                sizes, calm_since = now_sizes, time.monotonic()
                self._sync_with_backoff(engine, max_time=max(0.0, deadline - time.monotonic()))

    def _send_session_end(self, engine: SessionSync) -> None:
        """This run's `session_end`: the first SessionEnd record of the claimed inbox.

        Later records belong to later runs of the same session (a `--continue`
        that started and ended while this one was finishing): they go back to
        the live inbox for that run's worker.
        """
        records = self._valid_session_ends(self.sync_dir.claim_inbox(self.spec.external_id))
        if records:
            mine, later = records[0], records[1:]
            timestamp, payload = mine.timestamp or utc_now(), dict(mine.hook_input)
        elif self.end_hook_input:  # the hook could not write the inbox (e.g. disk full)
            later = []
            timestamp, payload = utc_now(), dict(self.end_hook_input)
        else:
            later = []
            timestamp, payload = utc_now(), self._synthetic_end_payload()
        engine.send_session_end(timestamp, payload)
        for record in later:
            self.sync_dir.append_inbox(self.spec.external_id, record)

    def _synthetic_end_payload(self) -> dict:
        """No SessionEnd hook ran (Claude Code was killed, or `confabctl stop`): say why."""
        return {
            "session_id": self.spec.external_id,
            "transcript_path": self.spec.transcript_path,
            "cwd": self.state.cwd,
            "hook_event_name": "SessionEnd",
            "reason": "other",
            "confabd_reason": self.finish_reason,
        }

    def _finish_without_transcript(self) -> int:
        if self.suspend:
            return self._suspend()
        log.info("%s: no transcript at %s; nothing to sync", self.spec.external_id, self.spec.transcript_path)
        return self._cleanup()

    def _suspend(self) -> int:
        """SIGTERM: one last flush, keep the State so a master adopts the session."""
        if self.engine is not None:
            try:
                self._sync_with_backoff(self.engine, max_time=self.settings.shutdown_timeout_ms / 1000)
            except (SinkError, ConfigError, OSError) as exc:
                self._note_error(f"flush before stopping incomplete: {exc}")
        self._save_state()
        return api.EXIT_MASTER_GONE

    def _cleanup(self) -> int:
        self.sync_dir.claim_inbox(self.spec.external_id)  # this run's records, if none were used
        self.sync_dir.close_session(self.spec.external_id)
        self._set_phase(Phase.DONE, save=False)
        if self.engine is not None:
            self.engine.sink.close()
        log.info("%s: finished", self.spec.external_id)
        return api.EXIT_DONE

    # -- waiting -------------------------------------------------------------

    def _wait_for_transcript(self) -> bool:
        """Poll for the transcript; then lock it. False when the session ends without one."""
        path = self.spec.transcript_path
        # With a parent to watch, wait as long as it lives (the master sends Finish
        # when it exits): a user may sit minutes before the first prompt.
        limit = None if self.spec.parent_pid else time.monotonic() + self.settings.transcript_wait_s
        while not os.path.exists(path):
            if self._stopping() or (limit is not None and time.monotonic() > limit):
                break
            self._wait_commands(self.settings.transcript_poll_s)
        return os.path.exists(path) and self._lock_transcript()

    def _lock_transcript(self) -> bool:
        """Exactly one process may upload a session: an flock on the transcript says who."""
        fd = os.open(self.spec.transcript_path, os.O_RDONLY | os.O_CLOEXEC)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.lock_fd = fd  # never read: held open so the flock lasts as long as the worker
                return True
            except BlockingIOError:
                if not announced:
                    self._note_error("another process is uploading this session; waiting for it")
                    self._report()
                    announced = True
            if self._stopping():
                os.close(fd)
                return False
            self._wait_commands(LOCK_POLL_S)

    def _wait_commands(self, timeout: float) -> None:
        """Sleep until a command or signal arrives, or `timeout` passes; heard by the master
        at least every heartbeat interval meanwhile (worker_api.Heartbeat)."""
        end = time.monotonic() + max(0.0, timeout)
        while True:
            self._heartbeat_if_due()
            left = end - time.monotonic()
            beat = api.heartbeat_interval(self.settings)
            ready = wait_for_ready([self.conn, self._wake_r], timeout=max(0.0, min(left, beat) if beat else left))
            if ready or time.monotonic() >= end:
                break
        if self._wake_r in ready:
            self._drain_wakeups()
        if self.conn in ready:
            self._read_commands()
        if os.getppid() != self.master_pid:  # reparented: the master died
            raise MasterGone()

    def _read_commands(self) -> None:
        try:
            while self.conn.poll(0):
                command = api.decode_command(self.conn.recv_bytes())
                if isinstance(command, api.Finish):
                    self.finish_reason = self.finish_reason or command.reason or api.STOP_REQUESTED
                    self.end_hook_input = self.end_hook_input or command.hook_input
                elif isinstance(command, api.Reload):
                    self.settings = command.settings
                    self.reload = True  # the sink and its credentials are rebuilt next cycle
        except (EOFError, OSError):
            raise MasterGone() from None

    def _heartbeat_if_due(self) -> None:
        beat = api.heartbeat_interval(self.settings)
        if beat and time.monotonic() - self._last_word >= beat:
            self._say(api.Heartbeat())

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _interrupted(self) -> bool:
        """backoff's giveup: stop retrying when a Finish or SIGTERM arrived meanwhile.

        Not a pure predicate: it reads the pipe (so a Finish is seen mid-backoff)
        and so may raise MasterGone, which ends the retries as it should."""
        if not self.finish_reason and not self.suspend:
            self._wait_commands(0)
        return self._stopping() and self.state.phase != Phase.FINISHING

    def _stopping(self) -> bool:
        return bool(self.finish_reason) or self.suspend

    def _on_sigterm(self, signum, frame) -> None:
        self.suspend = True

    def _next_interval(self) -> float:
        s = self.settings
        return (s.sync_interval_ms + random.uniform(0, s.jitter_ms)) / 1000

    def _retry_budget(self) -> float:
        return max(1.0, self.settings.sync_interval_ms / 1000)

    def _on_backoff(self, details) -> None:
        exc = details.get("exception")
        self._note_error(f"backend unavailable ({exc}); retrying in {details['wait']:.1f} s")
        self._report()

    # -- the engine and its sink ---------------------------------------------

    def _engine(self) -> SessionSync:
        if self.reload:
            self.reload = False
            self._drop_engine("")
        if self.engine is None:
            self.engine = self._make_engine()
        return self.engine

    def _make_engine(self) -> SessionSync:
        from .redact import Redactor

        backend = load_backend_config(self.spec.home)
        sink = _Heartbeating(open_sink(self.settings, backend, self.spec.home), self._heartbeat_if_due)
        self.state.sink = sink.kind
        redactor = Redactor.from_config(backend.redaction)
        self._set_phase(Phase.CONNECTING)
        return SessionSync(
            self.spec.external_id, self.spec.transcript_path, sink,
            cwd=self.state.cwd,
            redact=redactor.redact_line if redactor else None,
            oversized_lines=self.settings.oversized_lines,
            progress=self.state.files,
        )

    def _drop_engine(self, error: str) -> None:
        if self.engine is not None:
            self._keep_progress()
            self.engine.sink.close()
            self.engine = None
        if error:
            self._note_error(error)

    # -- State and reports ---------------------------------------------------

    def _start_state(self) -> None:
        spec = self.spec
        old = None
        try:
            old = self.sync_dir.load_state(spec.external_id)
        except CorruptRecord as exc:
            log.warning("%s; starting it afresh (the backend keeps the position)", exc)
        self.state = State(
            external_id=spec.external_id,
            transcript_path=spec.transcript_path,
            cwd=spec.cwd or (old.cwd if old else ""),
            pid=os.getpid(),
            parent_pid=spec.parent_pid,
            inbox_path=self.sync_dir.inbox_path(spec.external_id),
            started_at=old.started_at if old and old.started_at else utc_now(),
            confab_session_id=old.confab_session_id if old else "",
            parent_create_time=spec.parent_create_time,
            worker_restarts=spec.restarts,
            finishing=bool(spec.finish_reason) or bool(old and old.finishing),
            files=old.files if old and old.transcript_path == spec.transcript_path else {},
        )
        if self.state.finishing and not self.finish_reason:
            self.finish_reason = api.FINISH_RESUMED
        if self._inbox_has_session_end():
            self.finish_reason = self.finish_reason or api.SESSION_END_IN_INBOX
        if self.finish_reason:
            self.state.phase = Phase.FINISHING
        self._save_state()  # first thing: a record to adopt, whatever happens next
        self._report()

    def _inbox_has_session_end(self) -> bool:
        return bool(self._session_end_records())

    def _session_end_records(self) -> list[InboxRecord]:
        return self._valid_session_ends(self.sync_dir.read_inbox(self.spec.external_id))

    def _valid_session_ends(self, inbox: list[InboxRecord]) -> list[InboxRecord]:
        """The session_end records whose hook input is this session's (others are skipped)."""
        records = []
        for record in inbox:
            if record.type != "session_end":
                continue
            try:
                hook_input = msgspec.convert(record.hook_input, HookInput)
            except msgspec.ValidationError as exc:
                log.warning("%s: skipping an inbox record with unusable hook input (%s)", self.spec.external_id, exc)
                continue
            if hook_input.session_id != self.spec.external_id:
                log.warning("%s: skipping an inbox record of session %r", self.spec.external_id, hook_input.session_id)
                continue
            records.append(record)
        return records

    def _keep_progress(self) -> None:
        if self.engine is not None:
            self.state.files = self.engine.progress()
            if self.engine.session_id:
                self.state.confab_session_id = self.engine.session_id

    def _save_state(self) -> None:
        """Write State when it changed: an idle session costs no disk writes."""
        self._keep_progress()
        encoded = msgspec.json.encode(self.state)
        if encoded == self._saved_state:
            return
        try:
            self.sync_dir.save_state(self.state)
            self._saved_state = encoded
        except OSError as exc:  # e.g. ENOSPC: keep syncing; the backend holds the position
            message = f"cannot write State {self.sync_dir.state_path(self.spec.external_id)}: {exc.strerror or exc}"
            if message != self.last_error:
                log.error("%s: %s", self.spec.external_id, message)
            self.last_error = self.state.last_error = message

    def _set_phase(self, phase: Phase, save: bool = True) -> None:
        """Phases move forward: once finishing, only done follows (a sink rebuilt for the
        final sync is not "connecting" again; `status` must keep saying finishing)."""
        if self.state.phase == phase or (self.state.phase == Phase.FINISHING and phase != Phase.DONE):
            return
        self.state.phase = phase
        if save:
            self._save_state()
        self._report()

    def _note_success(self, sent: int) -> None:
        self.last_sync_at = utc_now()
        if sent or not self.state.last_sync_at:  # State records the last delivery, not every idle pass
            self.state.last_sync_at = self.last_sync_at
        errors = self.engine.errors() if self.engine else []
        replaced = getattr(self.engine.sink, "replaced_lines", 0) if self.engine else 0
        if replaced:
            errors.append(f"{replaced} line(s) were not valid UTF-8 and went out with U+FFFD replacements")
        self.last_error = self.state.last_error = "; ".join(errors)
        if self.state.phase in (Phase.CONNECTING, Phase.WAITING):
            self._set_phase(Phase.SYNCING)

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s: %s", self.spec.external_id, message)
        self.last_error = self.state.last_error = message

    def _report(self) -> None:
        engine = self.engine
        report = api.Report(
            phase=self.state.phase,
            confab_session_id=(engine.session_id if engine else "") or self.state.confab_session_id,
            files=engine.server_lines() if engine else {n: p.last_synced_line for n, p in self.state.files.items()},
            last_sync_at=self.last_sync_at or self.state.last_sync_at,
            last_error=self.last_error,
        )
        self._say(report)

    def _say(self, message) -> None:
        try:
            self.conn.send_bytes(api.encode(message))
            self._last_word = time.monotonic()
        except (OSError, EOFError):
            if self.state.phase != Phase.DONE:
                raise MasterGone() from None
