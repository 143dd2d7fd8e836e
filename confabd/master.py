"""The arbiter: one master process, one thread, one event loop.

The loop (`Arbiter.loop`) waits with a selector on
- the listening control socket and every connection (confabd.control_server),
- each worker's sentinel (readable when it exits) and its Pipe (Reports),
- the signal wakeup socket (handlers only queue; signals are handled here),
- a pidfd per Claude Code parent process (readable when it exits),
and runs the timers due (worker restarts, parent polls where pidfd is missing,
the watchdog, the shutdown deadline) from a heap.

The arbiter only runs things. The transport is `ControlServer`, the requests
are `Commands` (confabd.commands), the sessions' lives are `Sessions`
(confabd.sessions), and what differs between user and system mode is the
tenancy (confabd.tenancy), chosen by master_cli.

Workers are forked (start method "fork"): the master is single-threaded
(forking is safe), and a fork costs ~3 ms and ~11 MB PSS per idle worker
against ~80 ms / ~22 MB for spawn; the child sheds every fd it inherited
but its own before running the worker (confabd.worker.worker_main).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import os
import selectors
import signal
import socket
import time
from typing import Callable, Optional

from . import __version__, notify, privileges
from .adoption import Adoption
from .backend_health import BackendHealth
from .commands import Commands
from .config import Settings
from .control_server import ControlServer
from .errors import ConfigError
from .helpers import Helpers
from .metrics import Metrics
from .sessions import Sessions

log = logging.getLogger("confabd.master")

PARENT_POLL_S = 1.0  # fallback parent check when pidfd is unavailable
HEARTBEAT_CHECK_S = 1.0  # how often workers are checked against worker_timeout_s
SPOOL_CHECK_S = 10.0  # system mode: how often the spool is read for notes left while no master ran
HEALTH_TICK_S = 5.0  # ended sessions leave the metrics; an unreachable backend's summary when due
KILL_GRACE_S = 2.0  # after the shutdown timeout, before SIGKILL


def guarded(fn, *args) -> None:
    """Run a callback; a bug in one must not take every session down with the master."""
    try:
        fn(*args)
    except Exception:
        log.exception("internal error in the master loop (continuing)")


class Timers:
    """Callbacks due at a monotonic time, on a heap; a cancelled entry stays but does nothing."""

    def __init__(self):
        self.heap: list = []
        self.seq = itertools.count()  # equal due times run in the order they were set

    def call_later(self, delay: float, fn: Callable[[], None]) -> list:
        entry = [time.monotonic() + delay, next(self.seq), fn]
        heapq.heappush(self.heap, entry)
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

    def timeout(self) -> Optional[float]:
        """Seconds until the next one is due; None: nothing is."""
        return max(0.0, self.heap[0][0] - time.monotonic()) if self.heap else None

    def run_due(self) -> None:
        now = time.monotonic()
        while self.heap and self.heap[0][0] <= now:
            _, _, fn = heapq.heappop(self.heap)
            if fn is not None:
                guarded(fn)


class Arbiter:
    """The master. `run()` returns the process exit code."""

    SIGNAL_HANDLERS = {signal.SIGTERM: "handle_term", signal.SIGINT: "handle_int",
                       signal.SIGHUP: "handle_hup", signal.SIGCHLD: "handle_chld"}

    def __init__(self, settings: Settings, tenancy, *, socket_path: str,
                 reload_settings: Optional[Callable[[], Settings]] = None,
                 pidfile_fd: Optional[int] = None, on_ready: Optional[Callable[[], None]] = None):
        self.settings = settings
        self.tenancy = tenancy  # user or system mode (tenancy.py)
        self.reload_settings = reload_settings
        self.pidfile_fd = pidfile_fd
        self.on_ready = on_ready  # `confabd --daemon`: tells the launcher it may exit
        self.pid = os.getpid()
        self.started_at = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self.wake_r = self.wake_w = None
        self.helpers = Helpers(self.selector, self.timers, guarded)  # system mode: as-a-user jobs
        tenancy.use_helpers(self.helpers)
        self.sessions = Sessions(settings, tenancy, self.selector, self.timers)
        self.adoption = Adoption(self.sessions, tenancy, self.timers)
        self.metrics = Metrics(BackendHealth())  # per backend reachability, counts: status and metrics
        self.sessions.on_report_taken = self.metrics.take_report
        self.sessions.delivery_fields = self.metrics.status_fields
        self.control = ControlServer(socket_path, self.selector,
                                     handle=lambda conn, request: self.commands.handle(conn, request),
                                     accepts=tenancy.accepts, guard=guarded,
                                     dir_mode=tenancy.dir_mode, socket_mode=tenancy.socket_mode)
        self.commands = Commands(self.sessions, tenancy, self.control, describe_master=self.describe,
                                 shutdown=lambda: self.timers.call_later(0, lambda: self.shutdown("shutdown requested")),
                                 reload=lambda: self.reload("confabctl reload"), adoption=self.adoption,
                                 meter=self.metrics)

    # -- running -----------------------------------------------------------------

    def run(self) -> int:
        """Everything from the first fd on is inside the try: a master that cannot finish
        starting (or whose loop fails) releases the socket and its workers and exits, rather
        than hold the socket answering nobody (every new confabd would refuse to start)."""
        try:
            self.preload_worker_code()
            self.init_signals()
            self.control.listen()
            log.info("confabd %s master %d (%s mode) listening on %s, %s",
                     __version__, self.pid, self.tenancy.mode, self.control.path, self.tenancy.describe())
            self.adoption.start()  # from the loop, a State at a time: requests are served meanwhile
            self.notify("READY=1\nSTATUS=listening on " + self.control.path)
            if self.on_ready is not None:
                self.on_ready()
            self.start_timers()
            self.loop()
        finally:
            self.cleanup()
        log.info("master %d stopped", self.pid)
        return 0

    def loop(self) -> None:
        while not self.finished():
            timeout = 0.0 if self.control.has_backlog() else self.timers.timeout()
            for key, mask in self.selector.select(timeout):
                if self.selector.get_map().get(key.fd) is key:  # not closed by an earlier callback
                    guarded(key.data, mask)
            self.control.serve_backlog()
            self.timers.run_due()

    def finished(self) -> bool:
        """Shutting down, and the last worker has exited."""
        return self.sessions.stopping and not self.sessions.any_alive()

    def describe(self) -> dict:
        """The master as `status` shows it."""
        return {"pid": self.pid, "mode": self.tenancy.mode, "version": __version__,
                "uptime_s": round(time.monotonic() - self.started_at, 1), "socket": self.control.path}

    def start_timers(self) -> None:
        interval = notify.watchdog_interval()
        if interval:
            self.timers.every(interval, lambda: self.notify("WATCHDOG=1"))
        self.timers.every(PARENT_POLL_S, self.sessions.poll_parents)
        self.timers.every(HEARTBEAT_CHECK_S, self.sessions.check_heartbeats)
        self.timers.every(SPOOL_CHECK_S, self.adoption.adopt_waiting)
        self.timers.every(HEALTH_TICK_S, self.tick_health)

    def tick_health(self) -> None:
        self.metrics.forget_except(self.sessions.table)
        self.metrics.health.tick()

    def preload_worker_code(self) -> None:
        """Import what workers run once, here, so forked workers share those pages.

        Measured with 100 idle sessions: 18.9 MiB PSS per worker when each
        imported its own code after the fork, 7.6 MiB with the preload and
        gc.freeze() (bench/RESULTS.md).
        """
        privileges.preload_worker_modules()
        gc.collect()
        gc.freeze()

    def notify(self, message: str) -> None:
        try:
            notify.notify(message)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", message.split("\n")[0], exc)

    # -- signals -------------------------------------------------------------------

    def init_signals(self) -> None:
        """Handlers do nothing; set_wakeup_fd writes each signal's number to a socket the loop selects on."""
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in self.SIGNAL_HANDLERS:
            signal.signal(sig, _queue_only)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self.on_signals)

    def on_signals(self, _mask) -> None:
        try:
            data = self.wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):  # each signal once per wakeup, in order
            getattr(self, self.SIGNAL_HANDLERS[signum])()

    def handle_term(self) -> None:
        self.shutdown("SIGTERM received")

    def handle_int(self) -> None:
        self.shutdown("SIGINT received")

    def handle_hup(self) -> None:
        self.reload()

    def handle_chld(self) -> None:
        self.sessions.collect_exited()
        self.helpers.reap()

    # -- reload and shutdown ---------------------------------------------------------

    def reload(self, why: str = "SIGHUP") -> str:
        """Re-read the settings; "" when taken, else why not (the current ones are kept)."""
        if self.reload_settings is None:
            return "this master was started without a settings file to re-read"
        try:
            self.settings = self.reload_settings()
        except (ConfigError, OSError) as exc:
            log.error("%s: keeping the current settings: %s", why, exc)
            return str(exc)
        self.tenancy.configure(self.settings)
        log.info("%s: settings reloaded; telling %d workers", why, self.sessions.worker_count())
        self.sessions.reload(self.settings)
        return ""

    def shutdown(self, why: str) -> None:
        if self.sessions.stopping:
            return
        log.info("shutting down (%s): stopping %d workers", why, self.sessions.worker_count())
        self.notify("STOPPING=1")
        self.control.close()
        self.sessions.stop_all()
        timeout = self.settings.shutdown_timeout_ms / 1000
        self.timers.call_later(timeout + KILL_GRACE_S, self.sessions.kill_leftovers)

    def cleanup(self) -> None:
        self.helpers.close_all()
        self.sessions.close_all()
        self.control.close_all()
        # After a normal shutdown no worker is left. After an error, none may keep this process
        # from exiting: their State is on disk.
        self.sessions.kill_remaining()
        if self.wake_w is not None:
            signal.set_wakeup_fd(-1)
        self.selector.close()


def _queue_only(signum, frame):
    """Signal handler: nothing. set_wakeup_fd has already queued the signal number."""
