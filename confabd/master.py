"""The arbiter: one master process, one thread, one event loop.

The loop (`Arbiter.loop`) waits with a selector on
- the listening control socket and every client connection (confabd.control),
- each worker's sentinel (readable when it exits) and its Pipe (Reports),
- the signal wakeup socket (handlers only queue; signals are handled here),
- a pidfd per Claude Code parent process (readable when it exits),
and runs the timers due (worker restarts, parent polls where pidfd is missing,
the watchdog, the shutdown deadline) from a heap.

A session is a `Session`; its worker is a multiprocessing child running
`confabd.worker.run_worker(spec, conn)` (see worker_api.py for the contract).
Start method: fork. The master is single-threaded (forking is safe), a fork
costs ~3 ms and ~11 MB PSS per idle worker against ~80 ms / ~22 MB for spawn,
and the child drops every master fd it inherited before running the worker.
"""

from __future__ import annotations

import errno
import gc
import heapq
import importlib
import itertools
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import struct
import time
from typing import Callable, Optional

import msgspec

from . import __version__, control, notify, privileges, tenancy, worker_api
from .parents import CLAUDE_RE, find_claude, process_identity, same_process
from .config import Settings
from .errors import ConfigError
from .records import InvalidExternalId, State, validate_external_id
from .worker_api import Phase

log = logging.getLogger("confabd.master")

START_METHOD = "fork"
WORKER_MODULE = "confabd.worker"  # imported by preload_worker_code, never at import time

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # a worker that ran this long resets the crash count
CRASH_LOOP_LIMIT = 5  # this many crashes without a stable minute: failed
MAX_REQUESTS_PER_TURN = 16  # per connection, per loop turn: fairness under a flood
PARENT_POLL_S = 1.0  # fallback parent check when pidfd is unavailable
UNFINISHED_RETRY_S = 60.0  # a final sync that hit the shutdown timeout is tried again after this
KILL_GRACE_S = 2.0  # after the shutdown timeout, before SIGKILL
# The phases a worker reports; BACKOFF and FAILED are the master's alone, DONE is followed by its exit.
REPORTED_PHASES = (Phase.WAITING, Phase.CONNECTING, Phase.SYNCING, Phase.FINISHING)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


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


# ---------------------------------------------------------------------------


class Session:
    """What the master knows of one session: its worker, its parent, its reports."""

    def __init__(self, external_id: str, transcript_path: str, cwd: str,
                 parent_pid: int = 0, parent_create_time: float = 0.0, owner: int = tenancy.USER_OWNER):
        self.external_id = external_id
        self.owner = owner  # who it belongs to (tenancy.py): its worker runs as them
        self.transcript_path = transcript_path
        self.cwd = cwd
        self.parent_pid = parent_pid
        self.parent_create_time = parent_create_time
        self.parent_fd: Optional[int] = None  # pidfd of the parent
        self.proc: Optional[multiprocessing.process.BaseProcess] = None
        self.conn = None  # master end of the worker's Pipe
        self.started = 0.0  # monotonic start of the current worker
        self.phase = Phase.WAITING
        self.restarts = 0
        self.crashes = 0  # since the last stable minute
        self.restart_timer: Optional[list] = None
        self.finish_reason = ""  # set once: the session is being finished
        self.end_hook_input: Optional[dict] = None  # SessionEnd input that only the master holds
        self.report: Optional[worker_api.Report] = None
        self.confab_session_id = ""
        self.last_error = ""
        self.waiters: list = []  # clients of `stop --wait`
        self.then_register: Optional[tuple] = None  # registered again while finishing

    @property
    def alive(self) -> bool:
        return self.proc is not None

    @property
    def key(self) -> tuple[int, str]:
        return self.owner, self.external_id

    def status(self, owner_fields: dict) -> dict:
        report = self.report
        files = {name: {"last_synced_line": n} for name, n in (report.files if report else {}).items()}
        return {
            "external_id": self.external_id,
            "state": self.phase,
            "worker_pid": self.proc.pid if self.proc else None,
            "parent_pid": self.parent_pid or None,
            "transcript_path": self.transcript_path,
            "confab_session_id": (report and report.confab_session_id) or self.confab_session_id or None,
            "restarts": self.restarts,
            "files": files,
            "last_sync_at": (report and report.last_sync_at) or None,
            "last_error": self.last_error or (report and report.last_error) or None,
        } | owner_fields


class Client:
    """One control connection: buffered, non-blocking, framed."""

    def __init__(self, sock: socket.socket, peer: tuple[int, int, int]):
        self.sock = sock
        self.peer = peer  # (pid, uid, gid) from SO_PEERCRED: who is asking
        self.inbuf = control.FrameBuffer()
        self.outbuf = bytearray()
        self.deferred = False  # a reply is pending (stop --wait): hold further requests
        self.close_after_flush = False
        self.closed = False


class Arbiter:
    """The master. `run()` returns the process exit code."""

    def __init__(self, settings: Settings, tenancy, *, socket_path: str,
                 reload_settings: Optional[Callable[[], Settings]] = None,
                 pidfile_fd: Optional[int] = None, on_ready: Optional[Callable[[], None]] = None):
        self.settings = settings
        self.on_ready = on_ready  # `confabd --daemon`: tells the launcher it may exit
        self.socket_path = socket_path
        self.tenancy = tenancy  # user or system mode: who callers are, what they may do, where files are
        self.reload_settings = reload_settings
        self.pidfile_fd = pidfile_fd
        self.ctx = multiprocessing.get_context(START_METHOD)
        self.selector = selectors.DefaultSelector()
        self.sessions: dict[tuple[int, str], Session] = {}  # by (owner, external_id)
        self.connections: dict[int, int] = {}  # uid -> open control connections
        self.clients: set[Client] = set()
        self.timers: list = []
        self.backlog: dict[Client, None] = {}  # connections with requests left for the next turn
        self.timer_seq = itertools.count()
        self.listener: Optional[socket.socket] = None
        self.socket_ino = 0
        self.wake_r = self.wake_w = None
        self.stopping = False
        self.started_at = time.monotonic()
        self.pid = os.getpid()

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> int:
        self.preload_worker_code()
        self.install_signals()
        self.listen()
        log.info("confabd %s master %d (%s mode) listening on %s, %s",
                 __version__, self.pid, self.tenancy.mode, self.socket_path, self.tenancy.describe())
        self.adopt_all()
        self.notify("READY=1\nSTATUS=listening on " + self.socket_path)
        if self.on_ready is not None:
            self.on_ready()
        interval = notify.watchdog_interval()
        if interval:
            self.every(interval, lambda: self.notify("WATCHDOG=1"))
        self.every(PARENT_POLL_S, self.poll_parents)
        try:
            self.loop()
        finally:
            self.cleanup()
        log.info("master %d stopped", self.pid)
        return 0

    def loop(self) -> None:
        while not (self.stopping and not any(s.alive for s in self.sessions.values())):
            timeout = None
            if self.backlog:
                timeout = 0.0
            elif self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, mask in self.selector.select(timeout):
                if self.selector.get_map().get(key.fd) is key:  # not closed by an earlier callback
                    self.guarded(key.data, mask)
            self.serve_backlog()
            self.run_timers()

    @staticmethod
    def guarded(fn, *args) -> None:
        """Run a callback; a bug in one must not take every session down with the master."""
        try:
            fn(*args)
        except Exception:
            log.exception("internal error in the master loop (continuing)")

    def cleanup(self) -> None:
        for session in self.sessions.values():
            if session.conn is not None:
                session.conn.close()  # workers left see EOF and exit (EXIT_MASTER_GONE)
            if session.parent_fd is not None:
                os.close(session.parent_fd)
        for client in list(self.clients):
            self.close_client(client)
        if self.listener is not None:
            self.close_listener()
        signal.set_wakeup_fd(-1)
        self.selector.close()

    def notify(self, message: str) -> None:
        try:
            notify.notify(message)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", message.split("\n")[0], exc)

    # -- timers --------------------------------------------------------------

    def call_later(self, delay: float, fn: Callable[[], None]) -> list:
        entry = [time.monotonic() + delay, next(self.timer_seq), fn]
        heapq.heappush(self.timers, entry)
        return entry

    @staticmethod
    def cancel(entry: Optional[list]) -> None:
        if entry is not None:
            entry[2] = None

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        def tick():
            fn()
            self.call_later(interval, tick)
        self.call_later(interval, tick)

    def run_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, fn = heapq.heappop(self.timers)
            if fn is not None:
                self.guarded(fn)

    # -- signals -------------------------------------------------------------

    def install_signals(self) -> None:
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, _queue_only)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self.on_signals)

    def on_signals(self, _mask) -> None:
        try:
            data = self.wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):  # each signal once per wakeup, in order
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.shutdown(f"{signal.Signals(signum).name} received")
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGCHLD:
                self.reap()

    def reap(self) -> None:
        """Collect every child that exited (sentinels usually get there first)."""
        for session in list(self.sessions.values()):
            if session.proc is not None and session.proc.exitcode is not None:
                self.worker_exited(session)
        multiprocessing.active_children()  # joins any other finished child

    def reload(self) -> None:
        if self.reload_settings is None:
            return
        try:
            self.settings = self.reload_settings()
        except (ConfigError, OSError) as exc:
            log.error("SIGHUP: keeping the current settings: %s", exc)
            return
        self.tenancy.configure(self.settings)
        log.info("SIGHUP: settings reloaded; telling %d workers",
                 sum(s.alive for s in self.sessions.values()))
        for session in self.sessions.values():
            self.send(session, worker_api.Reload())

    # -- the control socket ----------------------------------------------------

    def listen(self) -> None:
        path = self.socket_path
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):  # an existing dir (e.g. /tmp) is never chmod-ed
            os.makedirs(directory, mode=self.tenancy.dir_mode, exist_ok=True)
        remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        if self.tenancy.socket_mode is not None:
            os.chmod(path, self.tenancy.socket_mode)
        sock.listen(128)
        sock.setblocking(False)
        self.socket_ino = os.stat(path).st_ino
        self.listener = sock
        self.selector.register(sock, selectors.EVENT_READ, self.on_accept)

    def close_listener(self) -> None:
        self.selector.unregister(self.listener)
        self.listener.close()
        self.listener = None
        try:
            if os.stat(self.socket_path).st_ino == self.socket_ino:
                os.unlink(self.socket_path)
        except OSError:
            pass

    def on_accept(self, _mask) -> None:
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving
                log.error("accept failed: %s", exc)
                return
            sock.setblocking(False)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            client = Client(sock, struct.unpack("3i", creds))
            uid = client.peer[1]
            if not self.tenancy.accepts(uid, self.connections.get(uid, 0)):
                sock.close()
                continue
            self.connections[uid] = self.connections.get(uid, 0) + 1
            self.clients.add(client)
            self.selector.register(sock, selectors.EVENT_READ, lambda mask, c=client: self.on_client(c, mask))

    def on_client(self, client: Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush(client)
        if mask & selectors.EVENT_READ and not client.closed:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close_client(client)
                return
            client.inbuf.feed(data)
            self.serve(client)

    def serve(self, client: Client) -> None:
        """Answer the complete requests in the buffer, in order: at most
        MAX_REQUESTS_PER_TURN, so one connection's flood cannot hold the loop
        while others wait; the rest is served on the next turns."""
        for _ in range(MAX_REQUESTS_PER_TURN):
            if client.deferred or client.close_after_flush or client.closed:
                return
            try:
                body = client.inbuf.next_frame()
            except control.FrameTooLarge as exc:
                client.close_after_flush = True
                self.respond(client, control.error(str(exc)))
                return
            if body is None:
                return
            try:
                request = control.decode_request(body)
                answer = self.handle(client, request)
            except ValueError as exc:
                answer = control.error(str(exc))
            except Exception as exc:  # a bug must cost one request, not the master
                log.exception("error handling a control request")
                answer = control.error(f"internal error: {exc}")
            if answer is None:
                client.deferred = True
            else:
                self.respond(client, answer)
        self.backlog[client] = None

    def serve_backlog(self) -> None:
        """Another turn for each connection that still had requests buffered."""
        waiting, self.backlog = self.backlog, {}
        for client in waiting:
            if not client.closed:
                self.guarded(self.serve, client)

    def respond(self, client: Client, answer: dict) -> None:
        if client.closed:
            return
        client.outbuf += control.encode_frame(answer)
        self.flush(client)

    def flush(self, client: Client) -> None:
        try:
            while client.outbuf:
                sent = client.sock.send(client.outbuf)
                del client.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close_client(client)
            return
        if not client.outbuf and client.close_after_flush:
            self.close_client(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        self.selector.modify(client.sock, events, self.selector.get_key(client.sock).data)

    def close_client(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        self.clients.discard(client)
        self.connections[client.peer[1]] -= 1
        self.selector.unregister(client.sock)
        client.sock.close()

    def deferred_reply(self, client: Client, answer: dict) -> None:
        client.deferred = False
        self.respond(client, answer)
        self.serve(client)

    # -- requests --------------------------------------------------------------

    def handle(self, client: Client, request) -> Optional[dict]:
        """The reply to one request; None when the reply comes later (stop --wait)."""
        uid = self.owner(client)
        refusal = self.tenancy.throttle(uid)
        if refusal is not None:
            return control.error(refusal.message, retry_after=round(refusal.retry_after, 3))
        if isinstance(request, control.Ping):
            return control.reply(pid=self.pid, version=__version__)
        if isinstance(request, control.Status):
            return self.status(uid, request.external_id)
        if isinstance(request, control.Register):
            return self.register(client, request)
        if isinstance(request, control.Finish):
            return self.request_finish(client, request)
        if isinstance(request, control.Shutdown):
            refused = self.tenancy.shutdown_refusal(uid)
            if refused:
                return control.error(refused)
            self.call_later(0, lambda: self.shutdown("shutdown requested"))
            return control.reply()
        return control.error(f"unsupported request {type(request).__name__}")

    def owner(self, client: Client) -> int:
        return self.tenancy.owner(client.peer)

    def find(self, uid: int, external_id: str) -> Optional[Session]:
        """`uid`'s session `external_id`; one who sees all (root in system mode) finds anybody's."""
        session = self.sessions.get((uid, external_id))
        if session is None and self.tenancy.sees_all(uid):
            session = next((s for s in self.sessions.values() if s.external_id == external_id), None)
        return session

    def status(self, uid: int, external_id: Optional[str]) -> dict:
        sessions = [s for s in self.sessions.values() if self.tenancy.may_see(uid, s.owner)]
        if external_id is not None:
            session = self.find(uid, external_id)
            if session is None:
                return control.error(f"no session {external_id!r}")
            sessions = [session]
        master = {"pid": self.pid, "mode": self.tenancy.mode, "version": __version__,
                  "uptime_s": round(time.monotonic() - self.started_at, 1),
                  "socket": self.socket_path}
        return control.reply(master=master,
                             sessions=[s.status(self.tenancy.describe_owner(s.owner)) for s in sessions])

    def register(self, client: Client, request: control.Register) -> dict:
        if self.stopping:
            return control.error("the master is shutting down")
        try:
            external_id = validate_external_id(request.external_id)
        except InvalidExternalId as exc:
            return control.error(str(exc))
        if not request.transcript_path:
            return control.error("a transcript path is required")
        transcript = os.path.abspath(request.transcript_path)
        uid = self.owner(client)
        session = self.sessions.get((uid, external_id))
        if session is not None and session.transcript_path != transcript:
            return control.error(
                f"session {external_id} is already registered with transcript "
                f"{session.transcript_path}; refusing a second registration from {transcript}")
        if session is not None and session.phase != Phase.FAILED and not session.finish_reason:
            return control.reply(registered=False, worker_pid=session.proc.pid if session.proc else None)
        live = sum(1 for s in self.sessions.values() if s.owner == uid and s.phase != Phase.FAILED)
        refusal = self.tenancy.admit(uid, transcript, live)
        if refusal:
            log.warning("session %s of uid %d refused: %s", external_id, uid, refusal)
            return control.error(refusal)
        if request.hook_pid:
            hook_pid = self.tenancy.hook_pid(client.peer, request.hook_pid)
            parent_pid, create_time = find_claude(hook_pid, request.parent_pid, request.claude_pid_hint)
            if parent_pid and not self.tenancy.owns_process(uid, parent_pid):
                parent_pid, create_time = 0, 0.0
            if not parent_pid:
                log.warning("session %s: no Claude Code process among the hook's ancestors; "
                            "parent monitoring is off", external_id)
        elif request.parent_pid:
            found = process_identity(request.parent_pid)
            if not found or not self.tenancy.owns_process(uid, request.parent_pid):
                return control.error(f"parent process {request.parent_pid} does not exist")
            parent_pid, create_time = found[0], found[1]
        else:
            parent_pid, create_time = 0, 0.0
        new = (external_id, transcript, request.cwd, parent_pid, create_time, uid)
        if session is not None and session.finish_reason and session.phase != Phase.FAILED:
            session.then_register = new  # e.g. --continue right after SessionEnd
            return control.reply(registered=False,
                                 note="the session is finishing; it starts again once that is done")
        if session is not None:  # failed before: start over
            self.forget(session)
        session = self.start_session(*new)
        return control.reply(registered=True, worker_pid=session.proc.pid if session.proc else None,
                             parent_pid=parent_pid or None)

    def start_session(self, external_id, transcript, cwd, parent_pid, create_time, uid) -> Session:
        session = Session(external_id, transcript, cwd, parent_pid, create_time, uid)
        self.tenancy.remember(uid)
        self.add(session)
        return session

    def request_finish(self, client: Client, request: control.Finish) -> Optional[dict]:
        try:
            external_id = validate_external_id(request.external_id)
        except InvalidExternalId as exc:
            return control.error(str(exc))
        uid = self.owner(client)
        reason = request.reason or worker_api.STOP_REQUESTED
        session = self.find(uid, external_id)
        if session is None:  # not running here: its State may still be on disk
            try:
                session = self.adopt_to_finish(uid, external_id, reason, request.hook_input)
            except Exception as exc:
                return control.error(f"no session {external_id!r} ({exc})")
            if session is None:
                return control.error(f"no session {external_id!r}")
        if session.phase == Phase.FAILED:
            return control.error(f"session {external_id} has failed ({session.last_error}); "
                                 "its State file is kept")
        self.finish(session, reason, request.hook_input)
        if request.wait:
            session.waiters.append(client)
            return None
        return control.reply(finishing=True)

    def adopt_to_finish(self, uid: int, external_id: str, reason: str,
                        hook_input: Optional[dict]) -> Optional[Session]:
        """A session the master does not run, adopted from its State (in `uid`'s sync dir) to be finished."""
        files = self.tenancy.sync_dir(uid)
        state = files.load_state(external_id)
        if state is None:
            files.delete_session(external_id)  # an orphan inbox: nobody will read it
            return None
        self.tenancy.remember(uid)
        return self.adopt(state, reason, uid, hook_input)

    # -- sessions and workers ----------------------------------------------------

    def add(self, session: Session, finish_reason: str = "") -> None:
        self.sessions[session.key] = session
        if finish_reason:
            session.finish_reason = finish_reason
        else:
            self.watch_parent(session)
        self.spawn(session)

    def forget(self, session: Session) -> None:
        self.unwatch_parent(session)
        self.cancel(session.restart_timer)
        self.sessions.pop(session.key, None)

    def preload_worker_code(self) -> None:
        """Import what workers run once, here, so forked workers share those pages.

        Measured with 100 idle sessions: 18.9 MiB PSS per worker when each
        imported its own code after the fork, 7.6 MiB with the preload and
        gc.freeze() (bench/RESULTS.md).
        """
        privileges.preload_worker_modules()
        self.worker_main = importlib.import_module(WORKER_MODULE).worker_main
        gc.collect()
        gc.freeze()

    def spawn(self, session: Session) -> None:
        try:
            where = self.tenancy.worker_home(session.owner, self.settings)
        except privileges.PrivilegeError as exc:
            self.crashed(session, str(exc))
            return
        spec = worker_api.WorkerSpec(
            external_id=session.external_id, transcript_path=session.transcript_path,
            sync_dir=where.sync_dir, home=where.home, settings=where.settings, run_as=where.run_as,
            cwd=session.cwd, parent_pid=session.parent_pid, parent_create_time=session.parent_create_time,
            restarts=session.restarts, finish_reason=session.finish_reason,
            end_hook_input=session.end_hook_input)
        master_end, worker_end = self.ctx.Pipe(duplex=True)
        inherited = self.master_fds() + [master_end.fileno()]
        proc = self.ctx.Process(target=self.worker_main, name=f"confabd-worker {session.external_id}",
                                args=(spec, worker_end, inherited))
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
        session.proc, session.conn, session.started = proc, master_end, time.monotonic()
        session.phase = Phase.FINISHING if session.finish_reason else Phase.WAITING
        self.selector.register(proc.sentinel, selectors.EVENT_READ,
                               lambda _m, s=session: self.worker_exited(s))
        self.selector.register(master_end, selectors.EVENT_READ,
                               lambda _m, s=session: self.on_report(s))
        log.info("session %s: worker %d started%s", session.external_id, proc.pid,
                 " (finishing)" if session.finish_reason else "")

    def master_fds(self) -> list[int]:
        """Every fd of the master a worker must not keep (listener, clients, pipes, pidfds...)."""
        fds = [key.fd for key in self.selector.get_map().values()]
        fds.append(self.selector.fileno())
        if self.wake_w is not None:
            fds.append(self.wake_w.fileno())
        if self.pidfile_fd is not None:
            fds.append(self.pidfile_fd)
        return fds

    def on_report(self, session: Session) -> None:
        try:
            while session.conn.poll():
                report = worker_api.decode_report(session.conn.recv_bytes())
                session.report = report
                if report.confab_session_id:
                    session.confab_session_id = report.confab_session_id
                if report.phase in REPORTED_PHASES:
                    session.phase = report.phase
                if report.phase == Phase.SYNCING and not report.last_error:
                    session.last_error = ""  # a restarted worker is healthy again (`restarts` keeps count)
        except (EOFError, OSError):
            self.unregister(session.conn)  # the sentinel tells the rest
        except msgspec.DecodeError as exc:
            log.warning("session %s: unreadable report from the worker: %s", session.external_id, exc)

    def unregister(self, fileobj) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def send(self, session: Session, message) -> bool:
        if session.conn is None or session.conn.closed:
            return False
        try:
            session.conn.send_bytes(worker_api.encode(message))
            return True
        except OSError:
            return False  # the worker is going; its sentinel says how

    def worker_exited(self, session: Session) -> None:
        proc = session.proc
        if proc is None:
            return
        proc.join(1.0)  # the sentinel fires as the child exits: reaping is immediate
        if proc.exitcode is None:
            return
        self.selector.unregister(proc.sentinel)
        if session.conn.fileno() in self.selector.get_map():
            self.on_report(session)  # a last report may be waiting; EOF unregisters it
            self.unregister(session.conn)
        code = proc.exitcode
        session.conn.close()
        proc.close()
        session.proc = session.conn = None
        ran = time.monotonic() - session.started
        how = describe_exit(code)
        if code == worker_api.EXIT_DONE:
            log.info("session %s: finished (worker %s)", session.external_id, how)
            self.done(session)
        elif self.stopping:
            log.info("session %s: worker %s during shutdown; State kept", session.external_id, how)
            self.forget(session)
            self.release_waiters(session, control.error(f"the master shut down; worker {how}"))
        elif code == worker_api.EXIT_UNFINISHED:  # backend unreachable while finishing: not a crash
            last = (session.report and session.report.last_error) or "the final sync could not complete"
            session.last_error = f"final sync incomplete ({last}); retrying in {UNFINISHED_RETRY_S:.0f} s"
            session.phase = Phase.BACKOFF
            log.warning("session %s: %s", session.external_id, session.last_error)
            self.release_waiters(session, control.error(session.last_error))
            session.restart_timer = self.call_later(UNFINISHED_RETRY_S, lambda: self.restart(session))
        else:
            if ran >= STABLE_AFTER_S:
                session.crashes = 0
            self.crashed(session, f"worker {how}")

    def crashed(self, session: Session, why: str) -> None:
        session.crashes += 1
        last = session.report.last_error if session.report and session.report.last_error else ""
        session.last_error = why + (f"; last error: {last}" if last else "")
        if session.crashes >= CRASH_LOOP_LIMIT:
            session.phase = Phase.FAILED
            session.last_error = f"crash loop: {session.crashes} crashes within a minute each; " + session.last_error
            log.error("session %s: giving up: %s", session.external_id, session.last_error)
            self.unwatch_parent(session)
            self.release_waiters(session, control.error(session.last_error))
            return
        delay = min(BACKOFF_FIRST_S * 2 ** (session.crashes - 1), BACKOFF_MAX_S)
        session.phase = Phase.BACKOFF
        log.warning("session %s: %s; restarting in %.1f s", session.external_id, session.last_error, delay)
        session.restart_timer = self.call_later(delay, lambda: self.restart(session))

    def restart(self, session: Session) -> None:
        session.restart_timer = None
        if self.stopping or self.sessions.get(session.key) is not session:
            return
        session.restarts += 1
        self.spawn(session)

    def done(self, session: Session) -> None:
        self.forget(session)
        self.release_waiters(session, control.reply(finished=True))
        if session.then_register is not None and not self.stopping:
            log.info("session %s: registered again while finishing: starting it anew", session.external_id)
            self.start_session(*session.then_register)

    def release_waiters(self, session: Session, answer: dict) -> None:
        waiters, session.waiters = session.waiters, []
        for client in waiters:
            if not client.closed:
                self.deferred_reply(client, answer)

    def finish(self, session: Session, reason: str, hook_input: Optional[dict] = None) -> None:
        """Ask for the session's end, once, whoever asks first."""
        if session.finish_reason or session.phase == Phase.FAILED:
            return
        session.finish_reason = reason
        session.end_hook_input = hook_input
        self.unwatch_parent(session)
        log.info("session %s: finishing (%s)", session.external_id, reason)
        if session.alive:
            session.phase = Phase.FINISHING
            self.send(session, worker_api.Finish(reason, hook_input))
        elif session.restart_timer is not None:  # in backoff: restart now, in finishing mode
            self.cancel(session.restart_timer)
            self.restart(session)

    # -- parents -----------------------------------------------------------------

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
        if self.sessions.get(session.key) is session:
            self.finish(session, worker_api.parent_exited(session.parent_pid))

    def poll_parents(self) -> None:
        for session in list(self.sessions.values()):
            if (session.parent_pid and session.parent_fd is None and not session.finish_reason
                    and session.phase != Phase.FAILED
                    and not same_process(session.parent_pid, session.parent_create_time)):
                self.parent_exited(session)

    # -- adoption (sessions left by a previous master) -----------------------------

    def adopt_all(self) -> None:
        for owner, state, ended in self.tenancy.states_to_adopt():
            if (owner, state.external_id) not in self.sessions:
                try:
                    self.adopt(state, worker_api.SESSION_END_IN_INBOX if ended else "", owner)
                except Exception:
                    log.exception("session %s (owner %d): cannot adopt it", state.external_id, owner)

    def adopt(self, state: State, finish_reason: str = "", uid: int = tenancy.USER_OWNER,
              hook_input: Optional[dict] = None) -> Session:
        parent_pid, create_time = state.parent_pid, state.parent_create_time
        if parent_pid and not create_time:  # e.g. written by the original Go client: check by name
            found = process_identity(parent_pid)
            if found and CLAUDE_RE.search(found[2]):
                create_time = found[1]
            else:
                finish_reason = finish_reason or worker_api.parent_gone()
        elif parent_pid and not same_process(parent_pid, create_time):
            finish_reason = finish_reason or worker_api.parent_gone(parent_pid)
        session = Session(state.external_id, state.transcript_path, state.cwd, parent_pid, create_time, uid)
        session.restarts = state.worker_restarts
        session.confab_session_id = state.confab_session_id
        session.end_hook_input = hook_input
        log.info("session %s: adopted from its State file%s", state.external_id,
                 f", finishing: {finish_reason}" if finish_reason else "")
        self.add(session, finish_reason)
        return session

    # -- shutdown --------------------------------------------------------------------

    def shutdown(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        live = [s for s in self.sessions.values() if s.alive]
        log.info("shutting down (%s): stopping %d workers", why, len(live))
        self.notify("STOPPING=1")
        if self.listener is not None:
            self.close_listener()
        timeout = self.settings.shutdown_timeout_ms / 1000
        for session in list(self.sessions.values()):
            self.cancel(session.restart_timer)
            self.unwatch_parent(session)
            if not session.alive:
                self.forget(session)  # its State stays for the next master
            elif not session.finish_reason:
                # A live Claude Code session is suspended, not ended: final flush,
                # State kept, and the next master re-adopts it (worker: SIGTERM).
                session.proc.terminate()
        self.call_later(timeout + KILL_GRACE_S, self.kill_leftovers)

    def kill_leftovers(self) -> None:
        for session in list(self.sessions.values()):
            if session.proc is not None and session.proc.exitcode is None:
                log.warning("session %s: worker %d did not finish within the shutdown timeout; killing it",
                            session.external_id, session.proc.pid)
                session.proc.kill()


def _queue_only(signum, frame):
    """Signal handler: nothing. set_wakeup_fd has already queued the signal number."""


def remove_stale_socket(path: str) -> None:
    """Remove a socket nobody answers on; raise AlreadyRunning if a master answers."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    import stat
    if not stat.S_ISSOCK(st.st_mode):
        raise AlreadyRunning(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing the stale socket %s", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    finally:
        probe.close()
    raise AlreadyRunning(f"another confabd master is already listening on {path}")


class AlreadyRunning(Exception):
    pass
