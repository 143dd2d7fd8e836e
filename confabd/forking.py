"""A worker process forked by the master: os.fork, one exit pipe, os.waitpid. Nothing more.

The master used multiprocessing.Process, which costs it O(live workers) per start and leaked
fds into every worker:
- `Process.start()` first polls every live child (multiprocessing.process._cleanup, a waitpid
  each): 12-14 % of the master's busy time at 500-1,000 live sessions (bench/RESULTS.md);
- each start leaves the master, besides the sentinel, the write end of a second pipe (for
  `multiprocessing.parent_process()`) that no selector knows of, so every later worker kept
  those ends of all its elder siblings' pipes.
Here the master holds one fd per worker (`sentinel`: the read end of a pipe whose write end
only that worker holds, so it is readable once the worker has exited), the worker knows the
one fd of ours it must keep (`kept_fds()`), and the master reaps each worker itself.

The subset of multiprocessing.Process the master uses: start, pid, sentinel, exitcode (a
negative signal number when killed), join(timeout), terminate, kill, close.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import traceback
from typing import Callable, Optional

_kept: tuple[int, ...] = ()  # in a worker: this module's fds it must not close


def sigterm_ready() -> None:
    """In a worker, once its SIGTERM handler is set: SIGTERM may come now (see Worker.start)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def kept_fds() -> tuple[int, ...]:
    """In a worker: the fds the launcher gave it (its end of the exit pipe)."""
    return _kept


class Worker:
    def __init__(self, target: Callable[..., None], args: tuple = ()):
        self.target = target
        self.args = args
        self.pid = 0
        self.sentinel = -1
        self._exitcode: Optional[int] = None

    def start(self) -> None:
        """Fork; the child runs target(*args) and exits with its sys.exit code (1 on an exception).

        The child starts with SIGTERM blocked, and its target unblocks it once it has its own
        handler (`sigterm_ready`): a SIGTERM sent meanwhile (a shutdown right after the fork)
        waits for that handler, rather than killing the child with the master's disposition
        or reaching the master's handler, which does nothing in a child."""
        exit_r, exit_w = os.pipe()  # both close-on-exec; fork keeps them
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(exit_r)
            os.close(exit_w)
            raise
        if pid == 0:
            os.close(exit_r)
            os._exit(_run_child(self.target, self.args, exit_w))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(exit_w)
        self.pid, self.sentinel = pid, exit_r

    @property
    def exitcode(self) -> Optional[int]:
        """None while it runs; reaps it once it has exited."""
        if self._exitcode is None and self.pid:
            self._wait(os.WNOHANG)
        return self._exitcode

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait up to `timeout` s (None: forever) for the exit, and reap it."""
        if self._exitcode is not None:
            return
        if timeout is not None:
            poller = select.poll()  # not select(): the master's fds go past FD_SETSIZE
            poller.register(self.sentinel, select.POLLIN)
            if not poller.poll(max(0, int(timeout * 1000))):
                return
        self._wait(0)  # its exit pipe closed: it has exited, or is about to

    def _wait(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped by someone else: no code to know
            self._exitcode = 255
            return
        if pid:
            self._exitcode = os.waitstatus_to_exitcode(status)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        # Only while unreaped: until we reap it, its pid cannot belong to another process.
        if self.exitcode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def _run_child(target: Callable[..., None], args: tuple, exit_w: int) -> int:
    """The child: stdin from /dev/null (as multiprocessing did), target, its exit code."""
    global _kept
    _kept = (exit_w,)
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        target(*args)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            sys.stderr.write(f"{exc.code}\n")
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
    return code
