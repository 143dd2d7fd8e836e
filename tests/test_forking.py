"""confabd.forking.Worker: the exit codes the master tells apart, its sentinel, its reaping."""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from confabd import forking
from tests.waiting import wait_until


def _exit_with(code):
    sys.exit(code)


def _raise():
    raise RuntimeError("a bug in the worker")


def _wait_for_signal():
    signal.pause()


def _report_kept(w: int):
    os.write(w, repr(forking.kept_fds()).encode())
    os.write(w, b" stdin:" + os.readlink("/proc/self/fd/0").encode())


def started(target, *args) -> forking.Worker:
    worker = forking.Worker(target, args)
    worker.start()
    return worker


def test_exit_codes_as_multiprocessing_gave_them():
    cases = {3: started(_exit_with, 3), 0: started(_exit_with, None), 1: started(_raise)}
    for code, worker in cases.items():
        worker.join(30)
        assert worker.exitcode == code
        worker.close()


def test_a_killed_worker_says_which_signal_and_join_waits_only_as_long_as_asked():
    worker = started(_wait_for_signal)
    t0 = time.monotonic()
    worker.join(0.2)
    assert worker.exitcode is None and time.monotonic() - t0 >= 0.2
    assert not select.select([worker.sentinel], [], [], 0)[0]  # not readable while it runs
    worker.kill()
    wait_until(lambda: select.select([worker.sentinel], [], [], 0)[0], what="the sentinel at its exit")
    worker.join(10)
    assert worker.exitcode == -signal.SIGKILL
    worker.kill()  # reaped: its pid is never signalled again
    worker.close()


def test_the_child_knows_its_exit_pipe_and_reads_nothing_from_our_stdin():
    r, w = os.pipe()
    worker = started(_report_kept, w)
    os.close(w)
    worker.join(30)
    said = os.read(r, 4096).decode()
    os.close(r)
    kept, stdin = said.split(" stdin:")
    assert worker.exitcode == 0 and stdin == "/dev/null"
    assert len(eval(kept)) == 1  # its end of the exit pipe, which the master's sentinel reads
    worker.close()


def _handle_sigterm_late(ready_w: int):
    """Say "forked", wait (with a deadline) until the parent's SIGTERM is pending, then handle it."""
    os.write(ready_w, b"x")
    deadline = time.monotonic() + 30
    while signal.SIGTERM not in signal.sigpending():
        if time.monotonic() > deadline:
            sys.exit(2)
        time.sleep(0.01)
    got = []
    signal.signal(signal.SIGTERM, lambda *_: got.append(1))
    forking.sigterm_ready()
    sys.exit(0 if got else 3)


def test_a_sigterm_sent_before_the_worker_has_its_handler_waits_for_it():
    """A shutdown right after a fork: the SIGTERM neither kills the child nor is lost (it was both)."""
    ready_r, ready_w = os.pipe()
    worker = forking.Worker(_handle_sigterm_late, (ready_w,))
    worker.start()
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        worker.terminate()
        worker.join(30)
        assert worker.exitcode == 0
    finally:
        os.close(ready_r)
        worker.kill()
        worker.join(5)
        worker.close()
