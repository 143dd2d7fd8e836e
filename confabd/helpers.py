"""The system master's helpers, run without ever waiting for one.

A helper (privileges.fork_helper) is a child that became a user to do one
small job on their files. The user controls it: they may stop it (SIGSTOP),
or make it block (a FIFO where a State file should be). So the loop never
waits for one: its pipe is in the selector, what it writes is collected as
it comes (at most privileges.MAX_HELPER_REPLY), a timer kills it at its
deadline, and its answer, or why there is none, goes to a callback once it
has ended. A user may have MAX_HELPERS_PER_USER helpers running for their
requests at a time; more is refused at once (the master's own work, such as
adoption, runs one at a time per user and is not counted).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
from typing import Any, Callable, Optional

from . import privileges
from .privileges import PrivilegeError, User

log = logging.getLogger("confabd.master")

MAX_HELPERS_PER_USER = 4
READ_SIZE = 65536

# Called once: (value, "") or (None, why there is no value).
Done = Callable[[Any, str], None]


class Helper:
    def __init__(self, user: User, pid: int, fd: int, result_type: Any, done: Done, counted: bool):
        self.user, self.pid, self.fd = user, pid, fd
        self.result_type = result_type
        self.done = done
        self.counted = counted
        self.data = bytearray()
        self.timer: Optional[list] = None


class Helpers:
    def __init__(self, selector: selectors.BaseSelector, timers, guard: Callable):
        self.selector = selector
        self.timers = timers
        self.guard = guard  # a bug in a callback costs one request, not the master
        self.running: dict[int, Helper] = {}  # by pid
        self.unreaped: set[int] = set()
        self.per_uid: dict[int, int] = {}

    def run(self, user: User, fn: Callable, *args, done: Done, result_type: Any = Any,
            timeout: float = privileges.HELPER_TIMEOUT_S, counted: bool = True) -> None:
        """`fn(*args)` as `user` in a helper; `done(value, error)` when it has ended.

        PrivilegeError at once, without a helper, when the user already has
        MAX_HELPERS_PER_USER of them (`counted`) or the fork fails.
        """
        if counted and self.per_uid.get(user.uid, 0) >= MAX_HELPERS_PER_USER:
            raise PrivilegeError(f"uid {user.uid} already has {MAX_HELPERS_PER_USER} requests in "
                                 "progress; retry when they are answered")
        try:
            pid, fd = privileges.fork_helper(user, fn, *args)
        except OSError as exc:
            raise PrivilegeError(f"cannot start a helper as {user.name}: {exc}") from None
        os.set_blocking(fd, False)
        helper = Helper(user, pid, fd, result_type, done, counted)
        self.running[pid] = helper
        if counted:
            self.per_uid[user.uid] = self.per_uid.get(user.uid, 0) + 1
        self.selector.register(fd, selectors.EVENT_READ, lambda _m, h=helper: self.on_readable(h))
        helper.timer = self.timers.call_later(timeout, lambda h=helper, t=timeout: self.expired(h, t))

    def on_readable(self, helper: Helper) -> None:
        try:
            chunk = os.read(helper.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            helper.data += chunk
            if len(helper.data) > privileges.MAX_HELPER_REPLY:
                self.end(helper)
                self.answer(helper, None, f"a helper running as {helper.user.name} answered more "
                                          f"than {privileges.MAX_HELPER_REPLY} bytes")
            return
        self.end(helper)
        try:
            value = privileges.decode_helper_reply(helper.user, bytes(helper.data), helper.result_type)
        except PrivilegeError as exc:
            self.answer(helper, None, str(exc))
            return
        self.answer(helper, value, "")

    def expired(self, helper: Helper, timeout: float) -> None:
        helper.timer = None
        if helper.pid not in self.running:
            return
        self.end(helper)
        self.answer(helper, None, f"a helper running as {helper.user.name} did not answer "
                                  f"within {timeout:g} s")

    def end(self, helper: Helper) -> None:
        """Done with it, answered or not: killed all the same (one that answered and then
        stopped itself with SIGSTOP must not stay behind as an unreaped child)."""
        self.running.pop(helper.pid, None)
        if helper.counted:
            self.per_uid[helper.user.uid] -= 1
        self.timers.cancel(helper.timer)
        self.selector.unregister(helper.fd)
        os.close(helper.fd)
        try:
            os.kill(helper.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.unreaped.add(helper.pid)
        self.reap()

    def answer(self, helper: Helper, value: Any, error: str) -> None:
        if error:
            log.warning("uid %d: %s", helper.user.uid, error)
        self.guard(helper.done, value, error)

    def reap(self) -> None:
        """SIGCHLD (and after each helper's end): collect the helpers that have exited."""
        for pid in list(self.unreaped):
            try:
                reaped, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = pid
            if reaped:
                self.unreaped.discard(pid)

    def count(self) -> int:
        return len(self.running)

    def close_all(self) -> None:
        """The master is exiting: no helper outlives it."""
        for helper in list(self.running.values()):
            self.end(helper)
