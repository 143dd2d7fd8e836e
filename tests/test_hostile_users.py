"""A local user against the master: nobody can hang it, bloat it, freeze it or get past its limits.

Each test is an attack from docs/SECURITY.md, run for real: a connection that
never reads, a user's own worker or helper stopped with SIGSTOP while the
master talks to it, a FIFO planted where a State file should be, State files
planted to get past `max_sessions_per_user`. The system-mode ones use the real
throwaway users of tests/test_system_mode.py (they need root).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time

import psutil
import pytest

from tests.conftest import REPO, fixture_lines, wait_until
from tests.test_system_mode import System, backend, users  # noqa: F401 - fixtures

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="system mode tests need root (they create users)")


@pytest.fixture
def system(users, backend):  # noqa: F811
    s = System(users, backend)
    try:
        yield s
    finally:
        s.close()


def frame(message: dict) -> bytes:
    body = json.dumps(dict(message, v=1)).encode()
    return len(body).to_bytes(4, "big") + body


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def test_a_client_that_never_reads_is_dropped_and_the_master_stays_small(cfd):
    """Requests written without reading the replies: the master stops reading, then drops the peer."""
    master = cfd.master()
    for i in range(3):  # sessions make every status reply a few hundred bytes
        path = cfd.transcript(f"bloat-{i}")
        path.write_bytes(b"".join(fixture_lines()[:2]))
        assert cfd.ctl("start", "--session-id", f"bloat-{i}", "--transcript", str(path)).returncode == 0
    before = rss_mib(master.pid)
    request = frame({"type": "status"}) * 256
    sent, dropped = 0, False
    flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    flood.connect(str(cfd.socket))
    flood.settimeout(5.0)  # a send blocked this long: the master is pushing back, as it should
    try:
        while sent < 200 << 20:
            try:
                flood.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            except socket.timeout:
                break
            sent += len(request)
    finally:
        grown = rss_mib(master.pid) - before
        flood.close()
    print(f"\nsent {sent >> 20} MiB of requests; master RSS grew {grown:.1f} MiB; dropped: {dropped}")
    assert grown < 48, f"the master grew {grown:.0f} MiB for one connection that never reads"
    assert sent < 200 << 20, "the master took 200 MiB of requests without pushing back"
    assert cfd.status()["master"]["pid"] == master.pid  # and it still serves everyone else


@needs_root
def test_a_stopped_worker_and_a_huge_finish_do_not_hang_the_master(system, users, backend):  # noqa: F811
    """A SIGSTOPs their own worker, then sends it a finish with a 900 KB hook input: B is still served."""
    a, b = users
    system.start()
    eid = "stuck-worker"
    path = a.transcript(eid, fixture_lines()[:3])
    assert system.hook_start(a, eid, path).returncode == 0
    worker = wait_until(lambda: system.status(a)[eid]["worker_pid"], 20, what="A's worker")
    os.kill(worker, signal.SIGSTOP)
    try:
        finish = frame({"type": "finish", "external_id": eid, "wait": False, "reason": "attack",
                        "hook_input": {"session_id": eid, "junk": "x" * 900_000}})
        attacker = system.run_as(a, textwrap.dedent(f"""
            import socket, sys
            s = socket.socket(socket.AF_UNIX); s.connect({str(system.socket)!r})
            s.sendall(bytes.fromhex(sys.stdin.readline().strip()))
            print("sent", flush=True); sys.stdin.readline()
            """), stdin=subprocess.PIPE)
        attacker.stdin.write(finish.hex() + "\n")
        attacker.stdin.flush()
        assert attacker.stdout.readline().strip() == "sent"
        started = time.monotonic()
        r = system.ctl(b, "status", "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        print(f"\nB's status answered in {time.monotonic() - started:.2f} s while A's worker is stopped")
        assert system.proc.poll() is None
        attacker.stdin.write("\n")
        attacker.stdin.close()
        attacker.wait(30)
    finally:
        os.kill(worker, signal.SIGCONT)


@needs_root
def test_a_fifo_planted_as_a_state_file_does_not_freeze_the_master(system, users, backend):  # noqa: F811
    """`confabctl stop x` with a FIFO in x's files: the helper that reads it blocks, the master does not.

    A FIFO as x.json itself is now refused at once (the State is opened O_NONBLOCK and must be a
    regular file), so the FIFO that blocks the helper is x's inbox, which the same helper reads
    next: what is shown is that the loop never waits for a helper, whatever blocks it."""
    a, b = users
    system.start()
    a.sync_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(a.sync_dir, a.uid, a.gid)
    fifo_state = a.sync_dir / "fifo.json"
    os.mkfifo(fifo_state, 0o600)
    os.chown(fifo_state, a.uid, a.gid)
    r = system.ctl(a, "stop", "fifo")
    assert r.returncode != 0 and "not a regular file" in r.stderr, r.stderr
    state = a.sync_dir / "trap.json"
    state.write_text(json.dumps({"external_id": "trap", "transcript_path": str(a.transcript("trap")),
                                 "cwd": "/", "pid": 0, "inbox_path": "", "started_at": "2026-12-01T00:00:00Z"}))
    os.chown(state, a.uid, a.gid)
    fifo = a.sync_dir / "trap.inbox.jsonl"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, a.uid, a.gid)
    stopper = subprocess.Popen(
        ["setpriv", f"--reuid={a.uid}", f"--regid={a.gid}", "--init-groups", system.python[a.name],
         "-m", "confabd.ctl", "stop", "trap"],
        env={"HOME": str(a.home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
             "CONFABD_SYSTEM_SOCKET": str(system.socket)},
        cwd=str(a.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    master = psutil.Process(system.proc.pid)

    def blocked_helper():
        return [p for p in master.children() if p.uids().real == a.uid and p.status() != psutil.STATUS_ZOMBIE]

    helpers = wait_until(blocked_helper, 30, what="a helper of A's blocked on the FIFO")
    try:
        r = system.ctl(b, "status", "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        still_blocked = [h for h in helpers if h.is_running() and h.status() != psutil.STATUS_ZOMBIE]
        assert still_blocked, "B's status was answered only after A's helper had given up"
    finally:
        out, err = stopper.communicate(timeout=60)
    assert stopper.returncode != 0 and "trap" in err, (out, err)
    assert system.proc.poll() is None


@needs_root
def test_stop_of_planted_states_cannot_pass_the_session_cap(system, users, backend):  # noqa: F811
    """max_sessions_per_user is 3: A runs 3, then asks to stop 5 sessions it planted as State files."""
    a, _b = users
    system.start()
    for i in range(3):
        path = a.transcript(f"live-{i}", fixture_lines()[:2])
        assert system.ctl(a, "start", "--session-id", f"live-{i}", "--transcript", str(path)).returncode == 0
    a.sync_dir.mkdir(mode=0o700, exist_ok=True)
    for i in range(5):
        eid = f"planted-{i}"
        path = a.transcript(eid, fixture_lines()[:2])
        state = a.sync_dir / f"{eid}.json"
        state.write_text(json.dumps({"external_id": eid, "transcript_path": str(path), "cwd": "/",
                                     "pid": 0, "inbox_path": "", "started_at": "2026-12-01T00:00:00Z"}))
        os.chown(state, a.uid, a.gid)
        state.chmod(0o600)
    refused = 0
    held = backend.gate("event")  # a finishing session stays live until its session_end is answered
    try:
        for i in range(5):
            r = system.ctl(a, "stop", f"planted-{i}")
            refused += r.returncode != 0 and "too many sessions" in r.stderr
            live = [s for s in system.status().values()
                    if s["worker_pid"] and s["external_id"].startswith(("live-", "planted-"))]
            assert len(live) <= 3, f"A runs {len(live)} workers with max_sessions_per_user = 3"
    finally:
        held.release()
    assert refused == 5
    for i in range(5):  # refused, not lost: the State stays for later
        assert (a.sync_dir / f"planted-{i}.json").exists() or backend.events(f"planted-{i}")


def test_the_masters_end_of_a_worker_pipe_never_blocks():
    """A worker that does not read: the master's sends neither block nor grow without bound.

    Real Pipe (a socketpair), nobody reading the worker's end: queue() says "full" past the
    bound instead of waiting, and a message announced larger than the limit is refused
    instead of awaited."""
    import multiprocessing

    from confabd.worker_channel import MAX_OUTBOX, Unreadable, WorkerChannel

    master_end, worker_end = multiprocessing.get_context("fork").Pipe(duplex=True)
    channel = WorkerChannel(master_end)
    started, queued = time.monotonic(), 0
    while channel.queue(b"x" * 60_000):
        queued += 1
        assert queued < 10_000
    assert time.monotonic() - started < 5.0
    assert len(channel.outbox) <= MAX_OUTBOX
    worker_end.send_bytes(b"report")
    worker_end._send(b"\x7f\xff\xff\xff")  # a "message" of 2 GiB: the master must not wait for it
    messages, eof = [], False
    with pytest.raises(Unreadable):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got, eof = channel.receive()
            messages += got
    assert messages == [b"report"] and not eof
    channel.close()
    worker_end.close()


@needs_root
def test_a_user_has_at_most_four_helpers_at_a_time(system, users, backend):  # noqa: F811
    """Four requests of A each blocked in a helper (a FIFO as the inbox): a fifth is refused at once,
    B is served, and the four are answered with an error once their helpers' deadline kills them."""
    a, b = users
    system.start()
    a.sync_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(a.sync_dir, a.uid, a.gid)
    for i in range(5):
        eid = f"stuck-{i}"
        state = a.sync_dir / f"{eid}.json"
        state.write_text(json.dumps({"external_id": eid, "transcript_path": str(a.transcript(eid)),
                                     "cwd": "/", "pid": 0, "inbox_path": "", "started_at": "2026-12-01T00:00:00Z"}))
        os.chown(state, a.uid, a.gid)
        os.mkfifo(a.sync_dir / f"{eid}.inbox.jsonl", 0o600)
        os.chown(a.sync_dir / f"{eid}.inbox.jsonl", a.uid, a.gid)
    env = {"HOME": str(a.home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "CONFABD_SYSTEM_SOCKET": str(system.socket)}

    def stop(eid):
        return subprocess.Popen(["setpriv", f"--reuid={a.uid}", f"--regid={a.gid}", "--init-groups",
                                 system.python[a.name], "-m", "confabd.ctl", "stop", eid],
                                env=env, cwd=str(a.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    master = psutil.Process(system.proc.pid)

    def helpers_of_a():
        return [p for p in master.children() if p.uids().real == a.uid and p.status() != psutil.STATUS_ZOMBIE]

    waiting = [stop(f"stuck-{i}") for i in range(4)]
    wait_until(lambda: len(helpers_of_a()) == 4, 30, what="four helpers of A blocked")
    fifth = system.ctl(a, "stop", "stuck-4")
    assert fifth.returncode != 0 and "already has 4 requests in progress" in fifth.stderr, fifth.stderr
    assert len(helpers_of_a()) == 4  # refused at once: no fifth helper, and the four still blocked
    assert system.ctl(b, "status", "--json").returncode == 0
    for p in waiting:
        _out, err = p.communicate(timeout=60)
        assert p.returncode != 0 and "did not answer within" in err, err
    wait_until(lambda: not helpers_of_a(), 30, what="the helpers to be gone")
    assert all((a.sync_dir / f"stuck-{i}.json").exists() for i in range(5))  # nothing touched
