"""A session worker: one process that syncs one Claude Code session until it is finished.

Life of a worker (see worker_api.py for the contract with the master):
  1. write its State (so a crash of anything leaves a record to adopt);
  2. wait for the transcript (Claude Code creates it with the first request);
  3. take an exclusive lock on the transcript: exactly one uploader per session
     (a regular file only: a FIFO, a device or a directory is refused, saying why);
  4. sync every interval + jitter; while the sink is unavailable, back off
     (State.backoff: it lives across cycles and worker restarts);
  5. on Finish: final sync bounded by the shutdown timeout (retried inside it),
     a short linger for lines written just after SessionEnd, the `session_end`
     event, then delete State and inbox. A session whose transcript is locked by
     another process, or whose file cannot be delivered past a line (blocked),
     or whose sink stays unavailable, is not finished: State and inbox are kept,
     the reason is reported, and it exits EXIT_UNFINISHED to be retried later.
It may be killed (-9) at any instant: the sink's line numbers are the truth,
so the next worker resumes from them with nothing lost or sent twice; what it
must remember beyond them (agent IDs named in synced lines whose files do not
exist yet) is in State before the lines naming them are sent.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import resource
import signal
import socket
import sys
import time
from multiprocessing.connection import wait as wait_for_ready
from typing import Optional

import msgspec

from . import bindings, forking, go_compat, paths, privileges, providers, runs, worker_api as api
from .worker_api import Phase
from .backlog import LineCounter
from .config import ConfigError, load_backend_config
from .delivery import MeteredSink, Tally, sink_target
from .engine import SessionSync
from .errors import CorruptRecord
from .fileio import ensure_private_dir, read_private_file, try_lock_file, unlink_if_present
from .records import Backoff, HookInput, InboxRecord, NextRun, State
from .sinks import _deadline_sockets, open_sink, retry_delay
from .sinks.base import AuthFailed, SessionGone, SinkError, Unavailable
from .store import SyncDir, utc_now
from .transcript import open_regular

log = logging.getLogger("confabd.worker")

SESSION_GONE_LIMIT = 3  # 404s in a row before the session is finished locally
LOCK_POLL_S = 0.1
LINGER_POLL_S = 0.05
MAX_BACKOFF_WAIT_S = 3_600.0  # a retry_at further away is a clock jump: never wait longer

# What _acquire_transcript found.
LOCKED, ABSENT, BUSY, UNUSABLE = "locked", "absent", "busy", "unusable"


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


def worker_main(spec: api.WorkerSpec, conn) -> None:
    """The target of the master's forking.Worker: the first code in a freshly forked worker.

    Everything a worker must shed or become, in one place: the master's signal
    setup, its systemd variables, its fds, then (system mode) root itself.
    """
    privileges.reset_child_signals()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the master, which sends Finish
    for name in MASTER_ONLY_VARIABLES:
        os.environ.pop(name, None)
    _shed_fds(keep={conn.fileno(), *forking.kept_fds(), *_log_fds()})
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
            plain.filters = list(handler.filters)  # logs.QuietLibraries
            root.handlers[i] = plain


def _log_fds() -> list[int]:
    """The fds the logging handlers write to (stderr, the master's log file): kept."""
    fds = []
    for handler in logging.getLogger().handlers:
        try:
            fds.append(handler.stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass
    return fds


def _shed_fds(keep: set[int]) -> None:
    """Every fd but stdio and `keep` (listener, connections, other workers' pipes, pidfds,
    the pidfile...) becomes /dev/null. Whatever the master had open is shed, not only what
    it knows of: a list of the master's fds missed multiprocessing's own pipe ends, and
    building one cost the master O(sessions) per spawn. dup2 /dev/null over them (rather
    than close them) so no stale object of the master can ever close a file the worker
    opens later under the same number."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in _open_fds():
        if fd > 2 and fd != devnull and fd not in keep:
            os.dup2(devnull, fd, inheritable=False)
    os.close(devnull)


def _open_fds() -> list[int]:
    # Every fd is below the size of the process's fd table: checking each number is cheaper
    # than listing /proc/self/fd (10x at 3,000 fds: listdir makes a string per fd).
    return [fd for fd in range(_fd_table_size()) if _is_open(fd)]


def _fd_table_size() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"FDSize:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 16)  # no /proc: below the limit


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


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
        self.session_lock_fd: Optional[int] = None  # <sync dir>/<id>.lock, held with lock_fd
        self._may_overwrite = False  # State on disk: see _save_state
        self.finish_reason = spec.finish_reason  # the master's word: it knows why
        self.end_hook_input = spec.end_hook_input  # SessionEnd input that reached us without the inbox
        self.suspend = False  # SIGTERM: final flush, keep State, exit (a master will adopt it)
        self.reload = False
        self.gone_count = 0
        self.last_error = ""
        self._last_unavailable = ""
        self._finish_by: Optional[float] = None
        self.master_pid = os.getppid()
        self._saved_state = b""
        self.last_sync_at = ""
        self.tally = Tally()  # what the sink confirmed and refused, for status and metrics
        self.line_counter = LineCounter()  # complete lines in the files: status's "behind"
        self.sink_target = ""
        self._reported_complete: dict[str, int] = {}
        self._last_word = 0.0  # monotonic: the last message to the master (heartbeats)
        self._claimed: Optional[list[InboxRecord]] = None  # this run's claimed inbox records
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- main ----------------------------------------------------------------

    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        forking.sigterm_ready()  # blocked since the fork: one sent meanwhile is handled now
        try:
            if not self._start_state():
                return api.EXIT_DONE
            found = self._acquire_transcript()
            if found == ABSENT:
                return self._finish_without_transcript()
            if found != LOCKED:
                return self._suspend() if self.suspend else self._unfinished(self.last_error)
            if not self._state_still_mine():
                return api.EXIT_DONE
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
            if self._backoff_left() <= 0:
                self._cycle()
            else:
                self._report_if_files_grew()  # while the sink is away, status still says how far behind
            if self.gone_count >= SESSION_GONE_LIMIT:
                self.finish_reason = api.SESSION_DELETED
                return
            interval = self._next_interval()
            self._wait_commands(min(self._backoff_left(), interval) if self.state.backoff.failures else interval)
            self._check_inbox()

    def _check_inbox(self) -> None:
        """A SessionEnd hook that could not reach the master still left its record here."""
        if os.path.exists(self.state.inbox_path):
            self._finish_if_inbox_says()

    def _finish_if_inbox_says(self) -> None:
        """This run's SessionEnd, or a later run registered (runs.py): this run is over."""
        mine, later = runs.split(self.sync_dir.read_inbox(self.spec.external_id), self._identity())
        if later:
            self.finish_reason = self.finish_reason or api.REGISTERED_AGAIN
        elif self._valid_session_ends(mine):
            self.finish_reason = self.finish_reason or api.SESSION_END_IN_INBOX

    def _identity(self) -> runs.RunIdentity:
        return runs.RunIdentity(self.spec.run_id, self.spec.parent_pid, self.spec.parent_create_time)

    def _state_still_mine(self) -> bool:
        """Once the lock is ours, State as the process that held it left it: that process
        (the orphaned worker of a killed master) may have finished this run meanwhile, or
        handed it over to the next run; else its progress is ours to continue."""
        try:
            fresh = self.sync_dir.load_state(self.spec.external_id)
        except CorruptRecord:
            return True
        if fresh is None or fresh.run_id != self.state.run_id:
            log.info("%s: this run was finished by the process that held its lock", self.spec.external_id)
            return False
        self.state.files = fresh.files or self.state.files
        self.state.pending_agents = sorted(set(fresh.pending_agents) | set(self.state.pending_agents))
        self.state.session_end_sent = self.state.session_end_sent or fresh.session_end_sent
        return True

    def _check_master(self) -> None:
        """Before a step a new master's worker would repeat (session_end, cleanup): an
        orphaned worker stops here, State saved, and leaves the rest to that worker."""
        if os.getppid() != self.master_pid:
            raise MasterGone()

    def _cycle(self) -> None:
        """One sync pass; an unavailable sink moves the backoff on (the loop waits it out)."""
        try:
            engine = self._engine()
            sent = engine.sync_until_idle()
            self.gone_count = 0
            self._backoff_reset()
            self._note_success(sent)
        except AuthFailed as exc:
            self._drop_engine(f"{exc}; will re-read credentials next cycle")
        except SessionGone as exc:
            self.gone_count += 1
            self._note_error(f"{exc} ({self.gone_count}/{SESSION_GONE_LIMIT})")
        except Unavailable as exc:
            self._backoff_failed(exc)
        except (ConfigError, SinkError, CorruptRecord) as exc:
            self._drop_engine(str(exc))
        except OSError as exc:
            self._note_error(f"cannot read {exc.filename or 'a file'}: {exc.strerror}")
        self._save_state()
        self._report()

    # -- backoff (State.backoff: survives cycles and restarts) ---------------

    def _backoff_left(self) -> float:
        b = self.state.backoff
        if not b.failures:
            return 0.0
        return min(MAX_BACKOFF_WAIT_S, max(0.0, b.retry_at - time.time()))

    def _backoff_failed(self, exc: Unavailable) -> None:
        b = self.state.backoff
        b.failures += 1
        b.delay = retry_delay(b.failures, exc.retry_after)
        b.retry_at = time.time() + b.delay
        cause = str(exc) if exc.unreachable else f"backend unavailable: {exc}"
        # One log line when the cause changes, then at failures 2, 4, 8, ...: an outage
        # of hours is a dozen lines, not one a retry. Status always has the latest.
        # An unreachable backend is the master's to say, once per backend (backend_health.py).
        if cause != self._last_unavailable or b.failures & (b.failures - 1) == 0:
            log.log(logging.DEBUG if exc.unreachable else logging.WARNING,
                    "%s: %s (failure %d in a row; retrying in %.1f s)", self.spec.external_id, cause,
                    b.failures, b.delay)
        self._last_unavailable = cause
        self.last_error = self.state.last_error = f"{cause}; retry {b.failures} in {b.delay:.1f} s"

    def _backoff_reset(self) -> None:
        if self.state.backoff.failures:
            self.state.backoff = Backoff()
            self._last_unavailable = ""

    def _with_retries(self, deadline: float, action):
        """`action()` retried on Unavailable with the backoff, until `deadline` (time.monotonic()).

        The final sync's requests all end by the deadline (`_deadline_sockets`), so a
        finish ends within the shutdown timeout even against a backend that trickles."""
        with _deadline_sockets.deadline(deadline):
            while True:
                try:
                    result = action()
                    self._backoff_reset()
                    return result
                except Unavailable as exc:
                    self._backoff_failed(exc)
                    self._save_state()
                    self._report()
                    wait = self._backoff_left()
                    if time.monotonic() + wait >= deadline or self.suspend:
                        raise
                    self._wait_commands(wait)

    # -- finishing -----------------------------------------------------------

    def _finish(self) -> int:
        """Final sync, linger, session_end, cleanup. Bounded by the shutdown timeout."""
        eid = self.spec.external_id
        log.info("%s: finishing (%s)", eid, self.finish_reason)
        self.state.finishing = True
        self._set_phase(Phase.FINISHING)
        deadline = self._finish_deadline()
        if self.gone_count >= SESSION_GONE_LIMIT:
            return self._cleanup()
        try:
            engine = self._engine()
            engine.hurry = True  # the last chance: no chunk spacing
            if 0 < self._backoff_left() < deadline - time.monotonic():
                self._wait_commands(self._backoff_left())  # e.g. a Retry-After still running
            self._with_retries(deadline, engine.sync_until_idle)
            self._linger(engine, deadline)
            blocked = engine.blocked()
            if blocked:  # the same again on a retry: only a user's retry or an upgrade can change it
                return self._unfinished("not finished: " + "; ".join(blocked.values()), api.EXIT_BLOCKED)
            if not self.state.session_end_sent:
                self._check_master()
                timestamp, payload = self._session_end_payload()  # claims this run's inbox records
                if engine.provider.posts_session_end:  # e.g. Codex: the backend never hears of an end
                    self._with_retries(deadline, lambda: engine.send_session_end(timestamp, payload))
                self.state.session_end_sent = True
                self._save_state()
        except (SinkError, ConfigError, OSError) as exc:
            return self._unfinished(f"final sync incomplete: {exc}")
        return self._cleanup()

    def _finish_deadline(self) -> float:
        """One shutdown timeout for the whole finish, from its first step (waiting
        for a lock included): `stop --wait` hears back within it."""
        if self._finish_by is None:
            self._finish_by = time.monotonic() + self.settings.shutdown_timeout_ms / 1000
        return self._finish_by

    def _unfinished(self, why: str, code: int = api.EXIT_UNFINISHED) -> int:
        """Not finished, and nothing forgotten: State (finishing) and inbox stay, the
        reason is in status and State, and the master tries again later."""
        self._note_error(why)
        log.warning("%s: %s; State kept for a retry", self.spec.external_id, why)
        self.state.finishing = True
        self._save_state()
        self._report()
        return code

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
                self._with_retries(deadline, engine.sync_until_idle)

    def _session_end_payload(self) -> tuple[str, dict]:
        """This run's `session_end`: the first SessionEnd record of this run in the claimed inbox."""
        ends = self._valid_session_ends(self._claim_my_records())
        if ends:
            return ends[0].timestamp or utc_now(), dict(ends[0].hook_input)
        if self.end_hook_input:  # the hook could not write the inbox (e.g. disk full)
            return utc_now(), dict(self.end_hook_input)
        return utc_now(), self._synthetic_end_payload()

    def _claim_my_records(self) -> list[InboxRecord]:
        """Claim the inbox (once per worker) and return this run's records.

        What belongs to a later run (runs.py: from its next_run record on; or, with
        none, a second SessionEnd: a `--continue` that started and ended while this
        one was finishing) goes back to the live inbox for that run, before this
        run's session_end is sent: a crash after it loses none of it.
        """
        if self._claimed is None:
            mine, later = runs.split(self.sync_dir.claim_inbox(self.spec.external_id), self._identity())
            if not later:
                later = self._valid_session_ends(mine)[1:]
            for record in later:
                self.sync_dir.append_inbox(self.spec.external_id, record)
            self._claimed = mine
        return self._claimed

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

    def _hand_over(self, run: NextRun) -> None:
        """This run is finished; the State becomes the next run's, in one rename: any master
        adopts it from here (the next run's worker, when this master starts it, takes it on)."""
        same_file = run.transcript_path == self.state.transcript_path
        self._keep_progress()
        handed = State(
            external_id=self.spec.external_id, transcript_path=run.transcript_path,
            cwd=run.cwd or self.state.cwd, parent_pid=run.parent_pid, parent_create_time=run.parent_create_time,
            inbox_path=self.state.inbox_path, started_at=utc_now(), confab_session_id=self.state.confab_session_id,
            files=self.state.files if same_file else {}, pending_agents=self.state.pending_agents if same_file else [],
            run_id=run.run_id,
            # the same session: the same agent, model and binding (a State without them is Claude Code's,
            # sent to the default backend: the next run must not lose them)
            provider=self.state.provider, model=self.state.model, config_dir=self.state.config_dir)
        self.sync_dir.save_state(handed)
        unlink_if_present(self.sync_dir.claimed_inbox_path(self.spec.external_id))
        log.info("%s: this run is finished; its State is handed to the next run %s", self.spec.external_id,
                 run.run_id)

    def _finish_without_transcript(self) -> int:
        if self.suspend:
            return self._suspend()
        log.info("%s: no transcript at %s; nothing to sync", self.spec.external_id, self.spec.transcript_path)
        return self._cleanup()

    def _suspend(self) -> int:
        """SIGTERM: one last flush, keep the State so a master adopts the session."""
        if self.engine is not None:
            try:
                deadline = time.monotonic() + self.settings.shutdown_timeout_ms / 1000
                self._with_retries(deadline, self.engine.sync_until_idle)
            except (SinkError, ConfigError, OSError) as exc:
                self._note_error(f"flush before stopping incomplete: {exc}")
        self._save_state()
        return api.EXIT_MASTER_GONE

    def _cleanup(self) -> int:
        self._check_master()
        self._claim_my_records()  # this run's records, if none were used
        later = runs.next_run(self.sync_dir.read_inbox(self.spec.external_id), self._identity())
        if later is not None:
            self._hand_over(later)
        else:
            self.sync_dir.close_session(self.spec.external_id)
            # while it is held: a waiter that opened it before sees it is gone and opens afresh
            unlink_if_present(paths.lock_path(self.sync_dir.path, self.spec.external_id))
        self._set_phase(Phase.DONE, save=False)
        if self.engine is not None:
            self.engine.sink.close()
        log.info("%s: finished", self.spec.external_id)
        return api.EXIT_DONE

    # -- waiting -------------------------------------------------------------

    def _acquire_transcript(self) -> str:
        """Wait for the transcript, then lock it: LOCKED, or why not once stopping.

        ABSENT: there is none (the session ends without one). BUSY: another process
        holds its lock (an orphaned worker of a killed master, a `save`); UNUSABLE:
        it is not a regular file or cannot be opened. A finish waits for BUSY to
        clear, bounded by the shutdown timeout; neither is ever "nothing to sync"
        for a transcript that exists (the session stays unfinished, State kept).
        """
        path = self.spec.transcript_path
        # With a parent to watch, wait as long as it lives (the master sends Finish
        # when it exits): a user may sit minutes before the first prompt.
        limit = None if self.spec.parent_pid else time.monotonic() + self.settings.transcript_wait_s
        found = ABSENT
        agent = providers.get(self.spec.provider)
        while not self._stopping():
            agent.prepare(path, self.spec.external_id)
            found = self._try_lock()
            if found == LOCKED or (found == ABSENT and limit is not None and time.monotonic() > limit):
                return found
            self._wait_commands(self.settings.transcript_poll_s if found != BUSY else LOCK_POLL_S)
        agent.prepare(path, self.spec.external_id)  # ended before its first poll: still collected
        found = self._try_lock()
        if found == BUSY and not self.suspend:
            deadline = self._finish_deadline()
            while found == BUSY and time.monotonic() < deadline and not self.suspend:
                self._wait_commands(min(LOCK_POLL_S, max(0.0, deadline - time.monotonic())))
                found = self._try_lock()
        return found

    def _try_lock(self) -> str:
        """Exactly one process may upload a session: an flock on the transcript says who."""
        path = self.spec.transcript_path
        try:
            fd = open_regular(path)  # follows a symlink: see docs/RELIABILITY.md
        except FileNotFoundError:
            self._may_overwrite = True
            return ABSENT
        except OSError as exc:
            self._may_overwrite = True
            self._note_once(f"cannot read the transcript {path}: {exc.strerror or exc}; not syncing it until it "
                            f"is a readable regular file")
            return UNUSABLE
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The transcript's flock is what `save` and older workers take; a transcript replaced
            # by a rename is a new inode, whose flock says nothing of an orphaned worker still
            # holding the old one, so the session's own lock file must be ours too.
            session_fd = try_lock_file(paths.lock_path(ensure_private_dir(self.sync_dir.path),
                                                       self.spec.external_id))
        except BlockingIOError:
            session_fd = None
        except OSError as exc:
            os.close(fd)
            self._may_overwrite = False
            self._note_once(f"cannot lock session {self.spec.external_id}: {exc.strerror or exc}")
            return UNUSABLE
        if session_fd is None:
            os.close(fd)
            self._may_overwrite = False
            self._note_once("another process is uploading this session; waiting for it")
            return BUSY
        self.lock_fd = fd  # never read: held open so the flock lasts as long as the worker
        self.session_lock_fd = session_fd
        self._may_overwrite = True
        return LOCKED

    def _note_once(self, message: str) -> None:
        """An error worth one report (not one per poll)."""
        if message != self.last_error:
            self._note_error(message)
            self._save_state()
            self._report()

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
                elif isinstance(command, api.Retry):  # confabctl retry: a fresh sink, no backoff
                    self.reload = True
                    self._backoff_reset()
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

    def _stopping(self) -> bool:
        return bool(self.finish_reason) or self.suspend

    def _on_sigterm(self, signum, frame) -> None:
        self.suspend = True

    def _next_interval(self) -> float:
        s = self.settings
        return (s.sync_interval_ms + random.uniform(0, s.jitter_ms)) / 1000

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

        backend = bindings.backend_for(load_backend_config(self.spec.home, default_url=self.settings.backend_url),
                                       self.spec.config_dir)
        self.sink_target = sink_target(self.settings, backend, self.spec.home)
        sink = _Heartbeating(MeteredSink(open_sink(self.settings, backend, self.spec.home), self.tally),
                             self._heartbeat_if_due)
        self.state.sink = sink.kind
        redactor = Redactor.from_config(backend.redaction)
        self._set_phase(Phase.CONNECTING)
        return SessionSync(
            self.spec.external_id, self.spec.transcript_path, sink,
            cwd=self.state.cwd,
            redact=redactor.redact_line if redactor else None,
            redact_lines=redactor.redact_lines if redactor else None,
            oversized_lines=self.settings.oversized_lines,
            progress=self.state.files,
            pending_agents=self.state.pending_agents,
            on_agents_named=self._save_state,
            chunk_cap=self.settings.max_chunks_per_file,
            provider=providers.get(self.spec.provider),
            model=self.state.model,
        )

    def _drop_engine(self, error: str) -> None:
        if self.engine is not None:
            self._keep_progress()
            self.engine.sink.close()
            self.engine = None
        if error:
            self._note_error(error)

    # -- State and reports ---------------------------------------------------

    def _start_state(self) -> bool:
        """Write this run's State; False when the State on disk is a later run's (this run
        was finished and handed over before this worker started: nothing is touched)."""
        spec = self.spec
        old = None
        try:
            old = self.sync_dir.load_state(spec.external_id)
        except CorruptRecord as exc:
            log.warning("%s; starting from what of it is valid (the backend keeps the position)", exc)
            old = self.sync_dir.set_aside_invalid_state(spec.external_id)
        if old is not None and old.run_id and old.run_id != spec.run_id:
            log.info("%s: the State is the next run's (%s): this run is over", spec.external_id, old.run_id)
            return False
        self.state = State(
            external_id=spec.external_id,
            transcript_path=spec.transcript_path,
            cwd=spec.cwd or (old.cwd if old else ""),
            provider=spec.provider,
            model=spec.model or (old.model if old else ""),
            pid=os.getpid(),
            parent_pid=spec.parent_pid,
            inbox_path=self.sync_dir.inbox_path(spec.external_id),
            started_at=old.started_at if old and old.started_at else utc_now(),
            confab_session_id=old.confab_session_id if old else "",
            parent_create_time=spec.parent_create_time,
            config_dir=spec.config_dir,
            worker_restarts=spec.restarts,
            finishing=bool(spec.finish_reason) or bool(old and old.finishing),
            files=old.files if old and old.transcript_path == spec.transcript_path else {},
            pending_agents=old.pending_agents if old and old.transcript_path == spec.transcript_path else [],
            backoff=old.backoff if old else Backoff(),
            last_sync_at=old.last_sync_at if old else "",  # the last confirmed delivery, across restarts
            run_id=spec.run_id,
            session_end_sent=bool(old and old.run_id == spec.run_id and old.session_end_sent),
        )
        if self.state.finishing and not self.finish_reason:
            self.finish_reason = api.FINISH_RESUMED
        self._finish_if_inbox_says()
        if self.finish_reason:
            self.state.phase = Phase.FINISHING
        self._save_state()  # first thing: a record to adopt, whatever happens next
        self._report()
        return True

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
            self.state.pending_agents = self.engine.pending_agents()
            self.state.blocked = self.engine.blocked()
            if self.engine.session_id:
                self.state.confab_session_id = self.engine.session_id

    def _save_state(self) -> None:
        """Write State when it changed: an idle session costs no disk writes.

        Until this worker knows nobody else holds the transcript's lock (it holds it, or the
        transcript is absent or unreadable), a State on disk that someone else wrote is left
        alone: that process (an orphaned worker) may hold the lock and be writing it (its
        session_end_sent, its pending agents); this worker reads it once the lock is its
        (_state_still_mine)."""
        if not self._may_overwrite and self._state_written_by_another():
            return
        self._keep_progress()
        self.state.pid = go_compat.state_pid(self.spec.parent_pid, self.spec.parent_create_time,
                                             self.state.finishing or self.state.phase == Phase.FINISHING,
                                             os.getpid())
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

    def _state_written_by_another(self) -> bool:
        """The State on disk is not what this worker last wrote (or was removed after it)."""
        try:
            return read_private_file(self.sync_dir.state_path(self.spec.external_id)) != self._saved_state
        except FileNotFoundError:
            return bool(self._saved_state)
        except OSError:
            return False  # unreadable: the write reports what is wrong

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
        if sent:  # the last delivery the sink confirmed: an idle pass that sent nothing is none
            self.last_sync_at = self.state.last_sync_at = utc_now()
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
            sink=self.sink_target,
            complete=self._complete_lines(),
            tally=self.tally,
        )
        self._say(report)

    def _complete_lines(self) -> dict[str, int]:
        if self.engine is not None:
            files = {n: (f.path, f.file_type == "transcript") for n, f in self.engine.files.items()}
        else:
            files = {n: (p.path, p.file_type == "transcript") for n, p in self.state.files.items() if p.path}
            files.setdefault(os.path.basename(self.spec.transcript_path), (self.spec.transcript_path, True))
        self._reported_complete = self.line_counter.complete_lines(files)
        return self._reported_complete

    def _report_if_files_grew(self) -> None:
        before = self._reported_complete
        if self._complete_lines() != before:
            self._report()

    def _say(self, message) -> None:
        try:
            self.conn.send_bytes(api.encode(message))
            self._last_word = time.monotonic()
        except (OSError, EOFError):
            if self.state.phase != Phase.DONE:
                raise MasterGone() from None
