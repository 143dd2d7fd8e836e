"""The life of every session, from registration or adoption to its end: the one owner of it.

A session is registered (a hook, `confabctl start`) or adopted (a State left
on disk by an earlier master or a hook's fallback). Each gets a worker, a
forked process running `confabd.worker.worker_main` (worker_api.py is the
contract), and, when its Claude Code is known, a watch on that process
(pidfd, else a 1 s poll).

Phases (worker_api.Phase): the worker reports waiting, connecting, syncing
and finishing; BACKOFF and FAILED are written here alone. A session ends in
one way, `finish(session, reason)`, whoever asks first (a hook, `stop`, its
Claude Code exiting, adoption of an orphan), and its reason travels to the
worker. Then, by the worker's exit code:
- EXIT_DONE: finished, files removed; `stop --wait` callers hear "finished";
- during shutdown: suspended, State kept for the next master;
- EXIT_UNFINISHED: the final sync hit the shutdown timeout; retried later;
- EXIT_BLOCKED: a file cannot be delivered past a line: FAILED, retried only
  when asked (`stop`, a registration) or by the next master;
- anything else: a crash; restarted after min(0.5 s * 2^(n-1), 60 s), the
  count reset by a stable minute; CRASH_LOOP_LIMIT crashes: FAILED, which is
  retried every `failed_retry_s` (and at once when it is finished);
- a worker that does not read its messages or is silent past
  `worker_timeout_s` is hung: killed, and its exit counts as a crash.

This module knows nothing of the control socket: a caller that waits for
the end leaves a callback in `Session.waiters`, called with "" (finished) or
the error. Whose session it is and as whom its worker runs is tenancy.py's.
"""

from __future__ import annotations

import gc
import importlib
import logging
import multiprocessing
import os
import selectors
import signal
import time
import uuid
from typing import Callable, Iterator, Optional

import msgspec

from . import forking, providers, worker_api
from .config import Settings
from .parents import process_identity, same_process
from .privileges import PrivilegeError
from .records import NextRun, State
from .session_table import SessionTable
from .tenancy import USER_OWNER
from .worker_api import Phase
from .worker_channel import Unreadable, WorkerChannel

log = logging.getLogger("confabd.master")

START_METHOD = "fork"
WORKER_MODULE = "confabd.worker"  # its worker_main; the master imports it only when preloading

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # a worker that ran this long resets the crash count
CRASH_LOOP_LIMIT = 5  # this many crashes without a stable minute: failed
UNFINISHED_RETRY_S = 60.0  # a final sync that hit the shutdown timeout is tried again after this
# A hook's session starts its worker once the hook has hung up: the agent waits for the hook, and
# a fork (and the new worker's first sync) next to it, on 2 cores, cost it ~3 ms (bench/RESULTS.md).
# A hook that keeps its connection open does not hold the session back longer than this.
HOOK_EXIT_WAIT_S = 0.2
# The phases a worker reports; BACKOFF and FAILED are the master's alone, DONE is followed by its exit.
REPORTED_PHASES = (Phase.WAITING, Phase.CONNECTING, Phase.SYNCING, Phase.FINISHING)

Waiter = Callable[[str], None]  # called once when the session ends: "" finished, else why not


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


class Registration(msgspec.Struct, frozen=True):
    """A session as a register request (or a State) describes it, checked and resolved."""

    owner: int
    external_id: str
    transcript_path: str
    cwd: str = ""
    parent_pid: int = 0  # its Claude Code, 0: not watched
    parent_create_time: float = 0.0
    provider: str = "claude-code"  # the agent (confabd.providers)
    model: str = ""  # what the agent's hook said its model is (Cursor)
    config_dir: str = ""  # its binding (bindings.py); "": the default backend
    run_id: str = ""  # which run of the session (runs.py): "" the first


class Session:
    """What the master knows of one session: its worker, its parent, its reports."""

    def __init__(self, registration: Registration):
        self.external_id = registration.external_id
        self.owner = registration.owner  # who it belongs to (tenancy.py): its worker runs as them
        self.transcript_path = registration.transcript_path
        self.cwd = registration.cwd
        self.provider = registration.provider
        self.model = registration.model
        self.parent_pid = registration.parent_pid
        self.parent_create_time = registration.parent_create_time
        self.config_dir = registration.config_dir
        self.run_id = registration.run_id
        self.parent_fd: Optional[int] = None  # a pidfd: readable when the parent exits
        self.proc: Optional[forking.Worker] = None
        self.pipe: Optional[WorkerChannel] = None  # the master's end of the worker's Pipe, non-blocking
        self.started = 0.0  # monotonic start of the current worker
        self.last_heard = 0.0  # monotonic: the worker's last message (or its start)
        self.kill_reason = ""  # why the master killed the current worker (hung): its crash says so
        self.tally: Optional[SessionTable] = None  # the table counting it as live, while in it
        self.phase = Phase.WAITING
        self.restarts = 0
        self.crashes = 0  # since the last stable minute
        self.restart_timer: Optional[list] = None
        self.start_timer: Optional[list] = None  # registered by a hook: starts once it has its answer
        self.finish_reason = ""  # set once: the session is being finished
        self.end_hook_input: Optional[dict] = None  # SessionEnd input that only the master holds
        self.report: Optional[worker_api.Report] = None
        self.confab_session_id = ""
        self.last_error = ""
        self.waiters: list[Waiter] = []  # `stop --wait` callers
        self.then_register: Optional[Registration] = None  # registered again while finishing
        self.is_blocked = False  # failed on a blocked file: retried only when asked (blocked())

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        """Into or out of FAILED moves its owner's live count (session_table.py)."""
        if self.tally is not None:
            self.tally.count(self, -1)
        self._phase = phase
        if self.tally is not None:
            self.tally.count(self, +1)

    @property
    def alive(self) -> bool:
        return self.proc is not None

    @property
    def key(self) -> tuple[int, str]:
        return self.owner, self.external_id

    @property
    def running(self) -> bool:
        """Neither ending nor given up on: a registration again is a no-op."""
        return self.phase != Phase.FAILED and not self.finish_reason


class Sessions:
    """Every session of this master, by (owner, external_id), and everything that happens to them."""

    def __init__(self, settings: Settings, tenancy, selector: selectors.BaseSelector, timers):
        self.settings = settings
        self.tenancy = tenancy
        self.selector = selector
        self.timers = timers  # call_later(delay, fn) -> entry; cancel(entry)
        self.ctx = multiprocessing.get_context(START_METHOD)
        self.table: SessionTable = SessionTable()  # (owner, external_id) -> Session
        self.stopping = False  # shutdown: no new sessions, no restarts
        self.on_slot_freed: Callable[[int], None] = lambda owner: None  # adoption.py: a session ended
        # metrics.py: every report (counts, reachability), and what a status row adds from them
        self.on_report_taken: Callable[[Session, worker_api.Report], None] = lambda session, report: None
        self.delivery_fields: Callable[[Session], dict] = lambda session: {}

    # -- looking up ----------------------------------------------------------------

    def get(self, owner: int, external_id: str) -> Optional[Session]:
        return self.table.get((owner, external_id))

    def find(self, owner: int, external_id: str) -> Optional[Session]:
        """`owner`'s session `external_id`; one who sees all (root in system mode) finds anybody's."""
        session = self.table.get((owner, external_id))
        if session is None and self.tenancy.sees_all(owner):
            session = next((s for s in self.table.values() if s.external_id == external_id), None)
        return session

    def visible_to(self, viewer: int) -> list[Session]:
        return [s for s in self.table.values() if self.tenancy.may_see(viewer, s.owner)]

    def live_count(self, owner: int) -> int:
        """`owner`'s sessions that are not FAILED (what max_sessions_per_user caps)."""
        return self.table.live_count(owner)

    def owned_by(self, owner: int) -> bool:
        return any(s.owner == owner for s in self.table.values())

    def workers(self) -> Iterator[Session]:
        return (s for s in self.table.values() if s.alive)

    def worker_count(self) -> int:
        return sum(1 for _ in self.workers())

    def any_alive(self) -> bool:
        return self.worker_count() > 0

    def status_row(self, session: Session) -> dict:
        """One session as `confabctl status` shows it (docs/CONTROL.md)."""
        report = session.report
        files = {name: {"last_synced_line": n} for name, n in (report.files if report else {}).items()}
        return {
            "external_id": session.external_id,
            "provider": session.provider,
            "state": session.phase,
            "worker_pid": session.proc.pid if session.proc else None,
            "parent_pid": session.parent_pid or None,
            "transcript_path": session.transcript_path,
            "cwd": session.cwd or None,
            "confab_session_id": (report and report.confab_session_id) or session.confab_session_id or None,
            "restarts": session.restarts,
            "files": files,
            "last_sync_at": (report and report.last_sync_at) or None,
            "last_error": session.last_error or (report and report.last_error) or None,
        } | self.delivery_fields(session) | self.tenancy.describe_owner(session.owner)

    # -- beginnings ----------------------------------------------------------------

    def register(self, registration: Registration, deferred: bool = False) -> Optional[Session]:
        """Start the session; None when it is finishing and will start again once that is done.
        `deferred`: its worker starts at `begin_deferred` (or after HOOK_EXIT_WAIT_S at the latest)."""
        session = self.get(registration.owner, registration.external_id)
        if session is not None and session.finish_reason and session.phase != Phase.FAILED:
            self.register_next_run(session, registration)  # e.g. --continue right after SessionEnd
            return None
        if session is not None:  # failed before: start over
            self.forget(session)
        return self.start(registration, deferred)

    def register_next_run(self, session: Session, registration: Registration) -> None:
        """Start `registration` once `session` is finished, and say so on disk now (an inbox
        record, runs.py): a master killed meanwhile leaves it for the next one."""
        if session.then_register is not None:
            return  # the same next run again (its prompt hook registers on every prompt)
        run_id = uuid.uuid4().hex[:16]
        session.then_register = msgspec.structs.replace(registration, run_id=run_id)
        self.tenancy.record_next_run(session.owner, session.external_id, NextRun(
            run_id, registration.transcript_path, registration.cwd, registration.parent_pid,
            registration.parent_create_time))
        log.info("session %s: registered again while finishing; run %s starts once it is done",
                 session.external_id, run_id)

    def start(self, registration: Registration, deferred: bool = False) -> Session:
        session = Session(registration)
        self.tenancy.remember(session.owner)
        self.add(session, deferred=deferred)
        return session

    def adopt(self, state: State, owner: int = USER_OWNER, finish_reason: str = "",
              hook_input: Optional[dict] = None) -> Session:
        parent_pid, create_time = state.parent_pid, state.parent_create_time
        if parent_pid and not create_time:  # e.g. written by the original Go client: check by name
            found = process_identity(parent_pid)
            if found and providers.get(state.provider).parent_re.search(found[2]):
                create_time = found[1]
            else:
                finish_reason = finish_reason or worker_api.parent_gone(agent=providers.get(state.provider).label)
        elif parent_pid and not same_process(parent_pid, create_time):
            finish_reason = finish_reason or worker_api.parent_gone(parent_pid, providers.get(state.provider).label)
        session = Session(Registration(owner, state.external_id, state.transcript_path, state.cwd,
                                       parent_pid, create_time, state.provider, state.model, state.config_dir,
                                       state.run_id))
        session.restarts = state.worker_restarts
        session.confab_session_id = state.confab_session_id
        session.end_hook_input = hook_input
        log.info("session %s: adopted from its State file%s", state.external_id,
                 f", finishing: {finish_reason}" if finish_reason else "")
        self.add(session, finish_reason)
        return session

    def add(self, session: Session, finish_reason: str = "", deferred: bool = False) -> None:
        self.table[session.key] = session
        if finish_reason:
            session.finish_reason = finish_reason
        if deferred:
            session.start_timer = self.timers.call_later(HOOK_EXIT_WAIT_S, lambda: self.begin(session))
            return
        self.begin(session)

    def begin_deferred(self, session: Session) -> None:
        """Now, not at its timer: the hook that registered it has gone."""
        if session.start_timer is not None:
            self.timers.cancel(session.start_timer)
            self.begin(session)

    def begin(self, session: Session) -> None:
        """Watch the session's parent and start its first worker."""
        session.start_timer = None
        if self.table.get(session.key) is not session or session.alive:
            return
        if not session.finish_reason:
            self.watch_parent(session)
        self.spawn(session)

    def forget(self, session: Session) -> None:
        self.unwatch_parent(session)
        self.timers.cancel(session.start_timer)
        self.timers.cancel(session.restart_timer)
        if self.table.pop(session.key, None) is session:
            self.on_slot_freed(session.owner)

    # -- workers -------------------------------------------------------------------------

    def spawn(self, session: Session) -> None:
        try:
            where = self.tenancy.worker_home(session.owner, self.settings)
        except PrivilegeError as exc:
            self.crashed(session, str(exc))
            return
        spec = worker_api.WorkerSpec(
            external_id=session.external_id, transcript_path=session.transcript_path,
            sync_dir=where.sync_dir, home=where.home, settings=where.settings, run_as=where.run_as,
            cwd=session.cwd, parent_pid=session.parent_pid, parent_create_time=session.parent_create_time,
            provider=session.provider, model=session.model, restarts=session.restarts, finish_reason=session.finish_reason,
            end_hook_input=session.end_hook_input, config_dir=session.config_dir, run_id=session.run_id)
        master_end, worker_end = self.ctx.Pipe(duplex=True)
        worker_main = importlib.import_module(WORKER_MODULE).worker_main  # preloaded: no import here
        proc = forking.Worker(worker_main, (spec, worker_end))  # it sheds every fd but its own
        try:
            # Collect garbage, then freeze what is left, so the child's collector never
            # writes to (and so copies) the pages it shares with the master.
            gc.collect()
            gc.freeze()
            proc.start()
        except OSError as exc:
            master_end.close()
            worker_end.close()
            log.error("session %s: cannot start a worker: %s", session.external_id, exc)
            self.tenancy.record_unstarted(session)
            self.crashed(session, f"cannot start a worker: {exc}")
            return
        worker_end.close()
        session.proc, session.pipe = proc, WorkerChannel(master_end)
        session.started = session.last_heard = time.monotonic()
        session.kill_reason = ""
        session.phase = Phase.FINISHING if session.finish_reason else Phase.WAITING
        self.selector.register(proc.sentinel, selectors.EVENT_READ,
                               lambda _m, s=session: self.worker_exited(s))
        self.selector.register(session.pipe, selectors.EVENT_READ,
                               lambda mask, s=session: self.on_worker_io(s, mask))
        log.info("session %s: worker %d started%s", session.external_id, proc.pid,
                 " (finishing)" if session.finish_reason else "")

    def on_worker_io(self, session: Session, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush(session)
        if mask & selectors.EVENT_READ and session.pipe is not None:
            self.on_report(session)

    def on_report(self, session: Session) -> None:
        """Whatever the worker wrote, without waiting for more: Reports and Heartbeats."""
        try:
            messages, eof = session.pipe.receive()
        except Unreadable as exc:
            self.unregister(session.pipe)  # nothing more is read from it; its sentinel tells the rest
            self.hung(session, f"unreadable message from the worker: {exc}")
            return
        except OSError:
            messages, eof = [], True
        if messages:
            session.last_heard = time.monotonic()
        for data in messages:
            try:
                message = worker_api.decode_report(data)
            except msgspec.DecodeError as exc:
                log.warning("session %s: unreadable report from the worker: %s", session.external_id, exc)
                continue
            if isinstance(message, worker_api.Report):
                self.take_report(session, message)
                self.on_report_taken(session, message)
        if eof:
            self.unregister(session.pipe)  # the sentinel tells the rest

    @staticmethod
    def take_report(session: Session, report: worker_api.Report) -> None:
        session.report = report
        if report.confab_session_id:
            session.confab_session_id = report.confab_session_id
        if report.phase in REPORTED_PHASES:
            session.phase = report.phase
        if report.phase == Phase.SYNCING and not report.last_error:
            session.last_error = ""  # a restarted worker is healthy again (`restarts` keeps count)

    def unregister(self, fileobj) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def send(self, session: Session, message) -> bool:
        """Queue `message` for the worker; never waits for it. A worker that does not read is hung."""
        if session.pipe is None or session.pipe.closed:
            return False
        if not session.pipe.queue(worker_api.encode(message)):
            self.hung(session, f"it does not read the master's messages ({len(session.pipe.outbox)} "
                               "bytes waiting)")
            return False
        self.flush(session)
        return True

    def flush(self, session: Session) -> None:
        try:
            session.pipe.flush()
        except OSError:
            session.pipe.outbox.clear()  # the worker is going; its sentinel says how
        if session.pipe.fileno() in self.selector.get_map():
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.pipe.outbox else 0)
            if self.selector.get_key(session.pipe).events != events:
                self.selector.modify(session.pipe, events, self.selector.get_key(session.pipe).data)

    def hung(self, session: Session, why: str) -> None:
        """A worker that neither reads nor speaks is as bad as a dead one: kill it; its exit restarts it."""
        if session.proc is None or session.kill_reason:
            return
        session.kill_reason = f"hung ({why}) and was killed"
        log.error("session %s: worker %d %s", session.external_id, session.proc.pid, session.kill_reason)
        session.proc.kill()

    def check_heartbeats(self) -> None:
        """Every worker must be heard from within worker_timeout_s (it speaks at least every third of it)."""
        timeout = self.settings.worker_timeout_s
        if timeout <= 0:
            return
        now = time.monotonic()
        for session in list(self.workers()):
            silent = now - session.last_heard
            if silent > timeout and session.proc.exitcode is None:
                self.hung(session, f"silent for {silent:.0f} s, worker_timeout_s is {timeout:g}")

    def collect_exited(self) -> None:
        """SIGCHLD: handle every worker that exited (sentinels usually get there first)."""
        for session in list(self.table.values()):
            if session.proc is not None and session.proc.exitcode is not None:
                self.worker_exited(session)

    def worker_exited(self, session: Session) -> None:
        proc = session.proc
        if proc is None:
            return
        proc.join(1.0)  # the sentinel fires as the child exits: reaping is immediate
        if proc.exitcode is None:
            return
        self.selector.unregister(proc.sentinel)
        if session.pipe.fileno() in self.selector.get_map():
            self.on_report(session)  # a last report may be waiting; EOF unregisters it
            self.unregister(session.pipe)
        code = proc.exitcode
        session.pipe.close()
        proc.close()
        session.proc = session.pipe = None
        ran = time.monotonic() - session.started
        how = session.kill_reason or describe_exit(code)
        session.kill_reason = ""
        if code == worker_api.EXIT_DONE:
            log.info("session %s: finished (worker %s)", session.external_id, how)
            self.done(session)
        elif self.stopping:
            log.info("session %s: worker %s during shutdown; State kept", session.external_id, how)
            self.forget(session)
            self.release_waiters(session, f"the master shut down; worker {how}")
        elif code == worker_api.EXIT_UNFINISHED:  # backend unreachable while finishing: not a crash
            self.retry_later(session)
        elif code == worker_api.EXIT_BLOCKED:
            self.blocked(session)
        else:
            if ran >= STABLE_AFTER_S:
                session.crashes = 0
            self.crashed(session, f"worker {how}")

    def retry_later(self, session: Session) -> None:
        last = (session.report and session.report.last_error) or "the final sync could not complete"
        session.last_error = f"final sync incomplete ({last}); retrying in {UNFINISHED_RETRY_S:.0f} s"
        session.phase = Phase.BACKOFF
        log.warning("session %s: %s", session.external_id, session.last_error)
        self.release_waiters(session, session.last_error)
        session.restart_timer = self.timers.call_later(UNFINISHED_RETRY_S, lambda: self.restart(session))

    def blocked(self, session: Session) -> None:
        """A file that cannot be delivered past a line (the chunk cap, a refused or oversized
        line): retrying on a timer would fail the same way forever. Failed, State kept, tried
        again when asked (`confabctl stop`, a registration) or by the next master (an upgrade)."""
        last = (session.report and session.report.last_error) or "a file is blocked"
        session.phase = Phase.FAILED
        session.is_blocked = True
        session.last_error = (f"blocked, {last}; not retried by itself: `confabctl stop` or a new master "
                              "(an upgrade) tries again")
        log.error("session %s: %s", session.external_id, session.last_error)
        self.release_waiters(session, session.last_error)

    def crashed(self, session: Session, why: str) -> None:
        session.crashes += 1
        last = session.report.last_error if session.report and session.report.last_error else ""
        session.last_error = why + (f"; last error: {last}" if last else "")
        if session.crashes >= CRASH_LOOP_LIMIT:
            # Failed, not forgotten: its lines are still to deliver. Tried again at a slow pace
            # (the cause may be gone: a full disk, a bad key, a bug fixed by an upgrade), and
            # a finish is still accepted: it restarts the worker at once, in finishing mode.
            retry = self.settings.failed_retry_s
            session.phase = Phase.FAILED
            session.last_error = (f"crash loop: {session.crashes} crashes within a minute each; "
                                  f"{session.last_error}; trying again every {retry:g} s (failed_retry_s)")
            log.error("session %s: failed: %s", session.external_id, session.last_error)
            self.release_waiters(session, session.last_error)
            session.restart_timer = self.timers.call_later(retry, lambda: self.restart(session))
            return
        delay = min(BACKOFF_FIRST_S * 2 ** (session.crashes - 1), BACKOFF_MAX_S)
        session.phase = Phase.BACKOFF
        log.warning("session %s: %s; restarting in %.1f s", session.external_id, session.last_error, delay)
        session.restart_timer = self.timers.call_later(delay, lambda: self.restart(session))

    def restart(self, session: Session) -> None:
        session.restart_timer = None
        if self.stopping or self.table.get(session.key) is not session:
            return
        session.restarts += 1
        self.spawn(session)

    def retry(self, session: Session) -> None:
        """`confabctl retry`: now rather than after the backoff or failed_retry_s. The crash count
        starts again; a worker that runs rebuilds its sink (a blocked file is tried again) and
        drops its backoff; one that does not is started at once."""
        session.crashes = 0
        log.info("session %s: retry requested (was %s)", session.external_id, session.phase)
        if session.alive:
            self.send(session, worker_api.Retry())
            return
        self.timers.cancel(session.restart_timer)
        session.last_error = ""
        self.restart(session)
        if session.alive:
            self.send(session, worker_api.Retry())  # read at its first wait: its State's backoff goes too

    def abandon(self, session: Session) -> None:
        """`confabctl forget` of a session without a worker: gone from this master, no session_end.
        (Its files are the tenancy's to remove.)"""
        log.warning("session %s: forgotten on request (was %s); no session_end is sent",
                    session.external_id, session.phase)
        self.forget(session)
        self.release_waiters(session, "the session was forgotten (confabctl forget)")

    # -- endings ----------------------------------------------------------------------

    def finish(self, session: Session, reason: str, hook_input: Optional[dict] = None) -> None:
        """Ask for the session's end, once, whoever asks first; the reason goes to the worker."""
        if session.finish_reason:
            if session.is_blocked and not session.alive:  # asked again: that is the retry
                session.is_blocked = False
                self.restart(session)
            return
        session.finish_reason = reason
        session.end_hook_input = hook_input
        self.unwatch_parent(session)
        log.info("session %s: finishing (%s)", session.external_id, reason)
        if session.alive:
            session.phase = Phase.FINISHING
            self.send(session, worker_api.Finish(reason, hook_input))
        elif session.restart_timer is not None:  # in backoff or failed: restart now, in finishing mode
            self.timers.cancel(session.restart_timer)
            self.restart(session)

    def done(self, session: Session) -> None:
        self.forget(session)
        self.release_waiters(session, "")
        if self.stopping:
            return
        if session.then_register is not None:
            log.info("session %s: registered again while finishing: starting it anew", session.external_id)
            self.start(session.then_register)
        else:  # a next run recorded on disk (by an earlier master) was handed its State
            self.tenancy.session_record(session.owner, session.external_id, counted=False,
                                        then=lambda record, error: self.adopt_handed_over(session, record))

    def adopt_handed_over(self, ended: Session, record) -> None:
        if record is None or self.stopping or self.get(ended.owner, ended.external_id) is not None:
            return
        state, has_end = record
        if state.run_id == ended.run_id:
            return  # not a new run: a State left by something else; adoption at start sees it
        log.info("session %s: its next run %s was registered before a master restart", state.external_id,
                 state.run_id)
        self.adopt(state, ended.owner, worker_api.SESSION_END_IN_INBOX if has_end else "")

    @staticmethod
    def release_waiters(session: Session, error: str) -> None:
        waiters, session.waiters = session.waiters, []
        for waiter in waiters:
            waiter(error)

    # -- parents ---------------------------------------------------------------------------

    def watch_parent(self, session: Session) -> None:
        if not session.parent_pid:
            return
        try:
            fd = os.pidfd_open(session.parent_pid)
        except ProcessLookupError:
            self.parent_exited(session)
            return
        except (AttributeError, OSError):
            return  # no pidfd here: poll_parents checks it once a second
        session.parent_fd = fd
        self.selector.register(fd, selectors.EVENT_READ, lambda _m, s=session: self.parent_exited(s))
        if not same_process(session.parent_pid, session.parent_create_time):  # recycled before we looked
            self.parent_exited(session)

    def unwatch_parent(self, session: Session) -> None:
        if session.parent_fd is not None:
            self.selector.unregister(session.parent_fd)
            os.close(session.parent_fd)
            session.parent_fd = None

    def parent_exited(self, session: Session) -> None:
        self.unwatch_parent(session)
        if self.table.get(session.key) is session:
            self.finish(session, worker_api.parent_exited(session.parent_pid, providers.get(session.provider).label))

    def poll_parents(self) -> None:
        """Where pidfd is missing: is each parent still the process it was?"""
        for session in list(self.table.values()):
            if (session.parent_pid and session.parent_fd is None and not session.finish_reason
                    and not same_process(session.parent_pid, session.parent_create_time)):
                self.parent_exited(session)

    # -- the master's own life -------------------------------------------------------------

    def reload(self, settings: Settings) -> None:
        """SIGHUP: new workers start with `settings`, running ones get them (their own flavour)."""
        self.settings = settings
        for session in list(self.workers()):
            try:
                where = self.tenancy.worker_home(session.owner, settings)
            except PrivilegeError as exc:
                log.warning("session %s: settings not reloaded: %s", session.external_id, exc)
                continue
            self.send(session, worker_api.Reload(where.settings))

    def stop_all(self) -> None:
        """Shutdown: sessions already finishing finish; live ones are suspended (State kept)."""
        self.stopping = True
        for session in list(self.table.values()):
            self.begin_deferred(session)  # registered just now: it was promised a worker
            self.timers.cancel(session.restart_timer)
            self.unwatch_parent(session)
            if not session.alive:
                self.forget(session)  # its State stays for the next master
            elif not session.finish_reason:
                # A live Claude Code session is suspended, not ended: final flush,
                # State kept, and the next master re-adopts it (worker: SIGTERM).
                session.proc.terminate()

    def kill_leftovers(self) -> None:
        for session in list(self.workers()):
            if session.proc.exitcode is None:
                log.warning("session %s: worker %d did not finish within the shutdown timeout; killing it",
                            session.external_id, session.proc.pid)
                session.proc.kill()

    def kill_remaining(self) -> None:
        """The master is exiting after an error: no worker may hold it (their State is on disk)."""
        for session in list(self.workers()):
            if session.proc.exitcode is None:
                log.warning("session %s: the master is exiting; killing worker %d (State kept)",
                            session.external_id, session.proc.pid)
                session.proc.kill()

    def close_all(self) -> None:
        """The master is exiting: workers left see EOF on their pipe and exit (EXIT_MASTER_GONE)."""
        for session in self.table.values():
            if session.pipe is not None:
                session.pipe.close()
            if session.parent_fd is not None:
                os.close(session.parent_fd)
