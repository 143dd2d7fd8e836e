"""The master with real workers, a real socket, real signals and the test backend."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import time

import psutil

from tests.conftest import PYTHON, backend_has_file, fixture_lines, pid_alive
from tests.waiting import wait_until


def append(path, lines):
    with open(path, "ab") as f:
        f.writelines(lines)


def assert_exactly_once(backend, eid, path):
    """Every complete line of the file on the backend, once, in order."""
    assert backend.file_bytes(eid, path.name) == path.read_bytes()


def test_hook_lifecycle_end_to_end(cfd):
    """session-start -> lines over time -> session-end: every line once, one session_end, files removed."""
    backend, eid = cfd.backend, "c7d3d95c-57f0-4359-8f4b-926a9bef5a3f"
    master = cfd.master()
    claude = cfd.claude()
    code, out, err = claude.hook("session-start", cfd.payload(eid, source="startup"))
    assert (code, json.loads(out)) == (0, {"continue": True, "suppressOutput": True}), err
    session = cfd.session(eid)
    assert session["parent_pid"] == claude.pid  # found by the word `claude` in its command line
    assert session["state"] in ("waiting", "connecting", "syncing")

    path, lines = cfd.transcript(eid), fixture_lines()
    for i in range(0, len(lines), 3):  # the transcript grows while the session syncs
        append(path, lines[i:i + 3])
        time.sleep(0.05)
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
    status = cfd.status(eid)
    s = status["sessions"][0]
    assert set(status["master"]) == {"pid", "mode", "version", "uptime_s", "socket"}
    assert status["master"]["pid"] == master.pid and status["master"]["mode"] == "user"
    assert set(s) == {"external_id", "provider", "state", "worker_pid", "parent_pid", "transcript_path", "cwd",
                      "confab_session_id", "restarts", "files", "last_sync_at", "last_error",
                      "sink", "lines_confirmed", "lines_complete", "behind", "delivered", "unreachable_since"}
    assert s["provider"] == "claude-code"
    wait_until(lambda: cfd.session(eid)["files"].get(path.name, {}).get("last_synced_line") == len(lines))
    assert cfd.session(eid)["confab_session_id"] == backend.session_id(eid)

    end = cfd.payload(eid, "SessionEnd", reason="exit")
    held = backend.gate("event")  # the upload cannot finish until released: the hook must not wait for it
    try:
        code, out, err = claude.hook("session-end", end)
        assert code == 0 and json.loads(out)["continue"] is True, err
        assert backend.events(eid) == []
    finally:
        held.release()
    backend.wait_for(lambda: backend.events(eid), timeout=30)
    wait_until(lambda: cfd.session(eid) is None, what="the session to leave the master")
    events = backend.events(eid)
    assert len(events) == 1 and events[0]["event_type"] == "session_end"
    assert events[0]["payload"] == end
    assert_exactly_once(backend, eid, path)
    assert not cfd.state_file(eid).exists() and not cfd.inbox_file(eid).exists()
    assert master.proc.poll() is None


def test_kill_9_workers_mid_upload_restarts_and_exactly_once(cfd):
    backend, eid = cfd.backend, "kill-workers"
    cfd.master()
    path, lines = cfd.transcript(eid), fixture_lines("python-to-rust-port.jsonl")
    backend.delay_next(1000, 0.02, path="chunk")  # slow uploads: kills land mid-upload
    append(path, lines[:10])
    assert cfd.ctl("start", "--session-id", eid, "--transcript", str(path)).returncode == 0
    seen = set()
    for k in range(3):
        pid = wait_until(lambda: (s := cfd.session(eid)) and s["worker_pid"] not in seen | {None}
                         and s["worker_pid"], what="a new worker")
        seen.add(pid)
        append(path, lines[10 + k * 40:10 + (k + 1) * 40])
        backend.wait_for(lambda: len(backend.lines(eid, path.name)) > 0)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid))
    wait_until(lambda: cfd.session(eid)["restarts"] == 3 and cfd.session(eid)["state"] == "syncing", timeout=20)
    backend.clear_faults()
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
    # healthy again: the crash is counted in `restarts`, not left as a stale error
    wait_until(lambda: cfd.session(eid)["last_error"] is None, timeout=10)
    assert cfd.ctl("stop", eid, "--wait").returncode == 0
    assert_exactly_once(backend, eid, path)
    assert len(backend.events(eid)) == 1


def test_parent_killed_finishes_the_session(cfd):
    """No SessionEnd hook: the master notices the death (pidfd) and finishes. How fast is bench/lifecycle.py's."""
    backend, eid = cfd.backend, "parent-dies"
    cfd.master()
    claude = cfd.claude()
    path = cfd.transcript(eid)
    append(path, fixture_lines()[:8])
    code, _, err = claude.hook("session-start", cfd.payload(eid))
    assert code == 0 and not err, err
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
    append(path, fixture_lines()[8:])  # written just before Claude Code dies
    claude.kill9()
    wait_until(lambda: not cfd.state_file(eid).exists() and backend.events(eid), timeout=30)
    assert_exactly_once(backend, eid, path)
    assert cfd.session(eid) is None
    assert not cfd.inbox_file(eid).exists()  # no SessionEnd hook ran


def test_recycled_parent_pid_is_not_taken_for_claude(cfd):
    """A State whose parent PID is alive but with another create time: that parent is gone."""
    backend, eid = cfd.backend, "recycled-pid"
    impostor = cfd.claude()  # alive, named claude, but not the process that started the session
    path = cfd.transcript(eid)
    append(path, fixture_lines())
    cfd.sync_dir.mkdir(parents=True)
    real_create_time = psutil.Process(impostor.pid).create_time()
    cfd.state_file(eid).write_text(json.dumps({
        "external_id": eid, "transcript_path": str(path), "pid": 0, "parent_pid": impostor.pid,
        "parent_create_time": real_create_time - 1000.0}))
    cfd.master()
    backend.wait_for(lambda: backend.events(eid), timeout=15)
    assert_exactly_once(backend, eid, path)
    wait_until(lambda: not cfd.state_file(eid).exists())
    assert impostor.proc.poll() is None

    # The same PID with the right create time is the parent: the session lives on.
    other = "right-pid"
    append(cfd.transcript(other), fixture_lines()[:5])
    cfd.state_file(other).write_text(json.dumps({
        "external_id": other, "transcript_path": str(cfd.transcript(other)), "parent_pid": impostor.pid,
        "parent_create_time": real_create_time}))
    cfd.masters[-1].stop()
    cfd.master()
    wait_until(lambda: (s := cfd.session(other)) and s["state"] == "syncing")
    assert cfd.session(other)["parent_pid"] == impostor.pid
    assert not backend.events(other)


def test_master_kill_9_then_new_master_readopts(cfd):
    backend, eid = cfd.backend, "master-dies"
    master = cfd.master()
    claude = cfd.claude()
    path, lines = cfd.transcript(eid), fixture_lines("coverage-test-fix.jsonl")
    append(path, lines[:20])
    assert claude.hook("session-start", cfd.payload(eid))[0] == 0
    backend.wait_for(lambda: len(backend.lines(eid, path.name)) == 20, timeout=20)
    worker = cfd.session(eid)["worker_pid"]
    master.kill9()
    wait_until(lambda: not pid_alive(worker), timeout=10, what="the orphaned worker to exit")
    assert cfd.state_file(eid).exists()
    append(path, lines[20:])  # written while no master runs
    cfd.master()
    s = wait_until(lambda: cfd.session(eid), what="re-adoption")
    assert s["parent_pid"] == claude.pid
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
    claude.kill9()
    backend.wait_for(lambda: backend.events(eid), timeout=10)
    assert_exactly_once(backend, eid, path)


def test_master_kill_9_parent_gone_meanwhile_is_finished_by_the_next(cfd):
    backend, eid = cfd.backend, "orphan"
    master = cfd.master()
    claude = cfd.claude()
    path = cfd.transcript(eid)
    append(path, fixture_lines()[:5])
    assert claude.hook("session-start", cfd.payload(eid))[0] == 0
    backend.wait_for(lambda: len(backend.lines(eid, path.name)) == 5, timeout=20)
    master.kill9()
    claude.kill9()
    append(path, fixture_lines()[5:])
    cfd.master()
    backend.wait_for(lambda: backend.events(eid), timeout=15)
    assert_exactly_once(backend, eid, path)
    wait_until(lambda: not cfd.state_file(eid).exists())


def test_50_sessions_at_once_all_synced(cfd):
    backend = cfd.backend
    cfd.master()
    ids = [f"many-{i:02d}" for i in range(50)]
    lines = fixture_lines()
    for eid in ids:
        append(cfd.transcript(eid), lines)
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda e: cfd.hook("session-start", cfd.payload(e)), ids))
    assert all(r.returncode == 0 and not r.stderr for r in results), [r.stderr for r in results if r.stderr]
    assert len(cfd.status()["sessions"]) == 50
    backend.wait_for(lambda: all(backend_has_file(backend, e, cfd.transcript(e)) for e in ids), timeout=60)
    r = cfd.ctl("shutdown")
    assert r.returncode == 0
    assert cfd.masters[-1].proc.wait(30) == 0
    for eid in ids:
        assert_exactly_once(backend, eid, cfd.transcript(eid))


def _open_files(pid: int) -> dict[int, tuple[str, int]]:
    """fd -> (what it is, its access mode) of a process, from /proc."""
    files = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration):
            continue  # closed meanwhile
        files[int(name)] = (link, flags & os.O_ACCMODE)
    return files


def test_a_worker_keeps_none_of_the_masters_fds(cfd):
    """Listener, connections, other workers' pipes, pidfds, epoll, pidfile: a worker keeps
    none of them; only stdio (the log) and its own exit pipe's write end are shared with the
    master. Bug: every worker kept the write end of a multiprocessing pipe per elder sibling
    (which no selector knew of, so the list of fds to shed missed them)."""
    master = cfd.master()
    claudes = [cfd.claude() for _ in range(3)]  # parents: the master holds a pidfd for each
    held = socket.socket(socket.AF_UNIX)  # a connection the master holds open meanwhile
    try:
        held.connect(str(cfd.socket))
        for i, claude in enumerate(claudes):
            cfd.transcript(f"fds-{i}").write_bytes(b"")
            code, _, err = claude.hook("session-start", cfd.payload(f"fds-{i}"))
            assert code == 0, err
        pid = wait_until(lambda: (s := cfd.session("fds-2")) and s["worker_pid"])
        # it has reported: past worker_main's shedding
        wait_until(lambda: cfd.session("fds-2")["state"] in ("waiting", "syncing"))
        ours, theirs = _open_files(master.pid), _open_files(pid)
        shared_links = {link for link, _ in ours.values()}
        log = ours[1][0]
        master_read_pipes = {link for link, mode in ours.values() if link.startswith("pipe:") and mode == os.O_RDONLY}
        kept = {}
        for fd, (link, mode) in theirs.items():
            if link.startswith("anon_inode:") or (link in shared_links and link not in ("/dev/null", log)):
                kept[fd] = (link, mode)
        exit_pipes = {fd: v for fd, v in kept.items() if v[0] in master_read_pipes and v[1] == os.O_WRONLY}
        assert len(exit_pipes) == 1, (kept, ours)  # its exit pipe: the master's end reads
        leaked = {fd: v for fd, v in kept.items() if fd not in exit_pipes}
        assert leaked == {}, f"the worker keeps master fds {leaked}; the master has {ours}"
        assert theirs[0][0] == "/dev/null", theirs
    finally:
        held.close()


def test_20_concurrent_hook_calls_for_one_session_give_one_worker(cfd):
    """No master yet: the hooks race to auto-start one; exactly one master, one worker."""
    backend, eid = cfd.backend, "same-session"
    path = cfd.transcript(eid)
    append(path, fixture_lines())
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: cfd.hook("session-start", cfd.payload(eid)), range(20)))
    assert all(r.returncode == 0 for r in results)
    assert all(not r.stderr for r in results), [r.stderr for r in results if r.stderr]
    status = cfd.status()
    assert [s["external_id"] for s in status["sessions"]] == [eid]
    master_pid = status["master"]["pid"]
    try:
        workers = [p for p in psutil.Process(master_pid).children() if p.status() != psutil.STATUS_ZOMBIE]
        assert len(workers) == 1
        backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
        assert backend.counts()["by_path"].get("init", 0) >= 1
        assert len({e["conn"] for e in backend.requests_log()}) >= 1
    finally:
        assert cfd.ctl("shutdown").returncode == 0
        wait_until(lambda: not pid_alive(master_pid), timeout=20)


def test_crash_looping_worker_backs_off_then_fails(cfd):
    backend, eid, other = cfd.backend, "crashes", "healthy"
    master = cfd.master()
    for e in (eid, other):
        append(cfd.transcript(e), fixture_lines())
        assert cfd.ctl("start", "--session-id", e, "--transcript", str(cfd.transcript(e))).returncode == 0
    killed, gaps, last = set(), [], None
    while len(killed) < 5:
        s = wait_until(lambda: (x := cfd.session(eid)) and (x["state"] == "failed" or
                                                            x["worker_pid"] not in killed | {None}) and x,
                       timeout=20)
        if s["state"] == "failed":
            break
        if last is not None:
            gaps.append(time.monotonic() - last)
        os.kill(s["worker_pid"], signal.SIGKILL)
        last = time.monotonic()
        killed.add(s["worker_pid"])
    s = wait_until(lambda: (x := cfd.session(eid)) and x["state"] == "failed" and x, timeout=20)
    assert len(killed) == 5 and s["restarts"] == 4 and s["worker_pid"] is None
    assert "SIGKILL" in s["last_error"] and "crash loop" in s["last_error"]
    assert gaps[0] >= 0.45 and gaps[-1] >= 3.5  # 0.5 s doubling
    for pid in killed:  # reaped: no zombies
        assert not os.path.exists(f"/proc/{pid}")
    assert master.proc.poll() is None and cfd.ping()
    backend.wait_for(lambda: backend_has_file(backend, other, cfd.transcript(other)), timeout=20)
    assert cfd.session(other)["state"] == "syncing"
    assert cfd.state_file(eid).exists()  # nothing lost: it is retried, and adopted by the next master
    assert "trying again every 300 s" in s["last_error"]
    assert cfd.ctl("status").returncode == 4  # a failed session: `status` says so in its exit code
    r = cfd.ctl("stop", "--wait", eid)  # a failed session's finish is accepted: it restarts, finishing
    assert r.returncode == 0, r.stderr
    assert backend_has_file(backend, eid, cfd.transcript(eid)) and len(backend.events(eid)) == 1
    assert not cfd.state_file(eid).exists() and cfd.session(eid) is None


def kill_workers(cfd, eid, count, killed):
    """kill -9 `count` workers of `eid` in turn, each once it has started."""
    for _ in range(count):
        pid = wait_until(lambda: (cfd.session(eid) or {}).get("worker_pid") not in killed | {None}
                         and cfd.session(eid)["worker_pid"], timeout=30, what="the next worker")
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)


def test_a_failed_session_is_retried_slowly_and_its_session_end_is_accepted(cfd):
    """Five crashes put it in failed; it is tried again every failed_retry_s; its SessionEnd
    hook is accepted while failed and the session completes once the crashes stop."""
    backend, eid = cfd.backend, "failed-then-fine"
    config = cfd.home / ".config" / "confabd" / "confabd.toml"
    config.write_text(config.read_text() + "failed_retry_s = 1.0\n")
    cfd.master()
    claude = cfd.claude()
    path = cfd.transcript(eid)
    append(path, fixture_lines()[:4])
    code, _out, err = claude.hook("session-start", cfd.payload(eid))
    assert code == 0, err
    killed = set()
    log = cfd.masters[0].log_text
    kill_workers(cfd, eid, 5, killed)  # CRASH_LOOP_LIMIT: failed (the log says so, status may already retry)
    wait_until(lambda: log().count("failed: crash loop") == 1, timeout=30, what="failed")
    assert "trying again every 1 s (failed_retry_s)" in log()
    kill_workers(cfd, eid, 1, killed)  # the slow retry came; still crashing: failed again at once
    wait_until(lambda: log().count("failed: crash loop") == 2, timeout=30, what="failed again")
    assert cfd.session(eid)["restarts"] >= 5
    append(path, fixture_lines()[4:])
    code, out, err = claude.hook("session-end", cfd.payload(eid, "SessionEnd", reason="exit"))
    assert code == 0 and "error" not in err.lower(), (out, err)
    backend.wait_for(lambda: len(backend.events(eid)) == 1, timeout=30)
    assert backend_has_file(backend, eid, path)
    wait_until(lambda: cfd.session(eid) is None and not cfd.state_file(eid).exists(), timeout=20)


def test_modes_stale_socket_and_second_master(cfd):
    # A stale socket left by a dead master is replaced.
    cfd.socket.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(cfd.socket))
    stale.close()
    master = cfd.master()
    assert stat.S_IMODE(os.stat(cfd.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cfd.socket.parent).st_mode) == 0o700
    eid = "private"
    append(cfd.transcript(eid), fixture_lines())
    assert cfd.hook("session-start", cfd.payload(eid)).returncode == 0
    wait_until(lambda: cfd.state_file(eid).exists(), what="the State the worker writes first")
    assert stat.S_IMODE(os.stat(cfd.sync_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cfd.state_file(eid)).st_mode) == 0o600
    # A second master refuses to start, and the first keeps serving.
    second = cfd.master(wait=False)
    assert second.proc.wait(20) == 1
    assert "already" in second.log_text()
    assert master.proc.poll() is None and cfd.ping()
    assert cfd.hook("session-end", cfd.payload(eid, "SessionEnd")).returncode == 0
    wait_until(lambda: cfd.inbox_file(eid).exists() or not cfd.state_file(eid).exists())
    if cfd.inbox_file(eid).exists():
        assert stat.S_IMODE(os.stat(cfd.inbox_file(eid)).st_mode) == 0o600
    assert master.stop() == 0
    assert not cfd.socket.exists()


def test_sigterm_suspends_live_sessions_and_next_master_resumes(cfd):
    """Shutdown flushes every worker and keeps live sessions' State for the next master."""
    backend, eid = cfd.backend, "suspended"
    master = cfd.master()
    claude = cfd.claude()
    path, lines = cfd.transcript(eid), fixture_lines("coverage-test-fix.jsonl")
    append(path, lines[:10])
    assert claude.hook("session-start", cfd.payload(eid))[0] == 0
    backend.wait_for(lambda: len(backend.lines(eid, path.name)) == 10, timeout=20)
    worker = cfd.session(eid)["worker_pid"]
    append(path, lines[10:])
    assert master.stop() == 0
    assert not pid_alive(worker)
    assert_exactly_once(backend, eid, path)  # final flush before stopping
    assert cfd.state_file(eid).exists() and not backend.events(eid)
    cfd.master()
    wait_until(lambda: cfd.session(eid))
    claude.kill9()
    backend.wait_for(lambda: backend.events(eid), timeout=15)


def test_sighup_reloads_and_sd_notify(cfd):
    notify_path = cfd.run_dir / "notify.sock"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(notify_path))
    sink.settimeout(10)
    cfd.env.update(NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="200000")
    master = cfd.master()
    messages = []

    def received(word):
        while not any(word in m for m in messages):
            messages.append(sink.recv(4096).decode())
        return True

    assert received("READY=1") and received("WATCHDOG=1")
    eid = "reload"
    append(cfd.transcript(eid), fixture_lines())
    assert cfd.ctl("start", "--session-id", eid, "--transcript", str(cfd.transcript(eid))).returncode == 0
    (cfd.home / ".config" / "confabd" / "confabd.toml").write_text("this is not toml")
    master.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "keeping the current settings" in master.log_text())
    assert cfd.ping()
    master.proc.send_signal(signal.SIGHUP)  # twice: the master stays up
    master.proc.send_signal(signal.SIGTERM)
    assert master.proc.wait(20) == 0
    assert received("STOPPING=1")
    sink.close()


def test_daemon_mode_pidfile_and_log(cfd):
    r = cfd.ctl("ping")
    assert r.returncode == 3
    import subprocess
    from tests.conftest import PYTHON
    log = cfd.root / "daemon.log"
    started = subprocess.run([PYTHON, "-m", "confabd.master_cli", "--daemon", "--log-file", str(log)],
                             env=cfd.env, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    assert cfd.ping()  # the launcher returned only once the daemon listened: no wait needed
    pidfile = cfd.socket.parent / "confabd.pid"
    pid = int(pidfile.read_text())
    proc = psutil.Process(pid)
    try:
        assert proc.ppid() == 1 or proc.terminal() is None
        assert pid == cfd.status()["master"]["pid"]
        assert "listening on" in log.read_text()
        again = subprocess.run([PYTHON, "-m", "confabd.master_cli", "--daemon"], env=cfd.env,
                               capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "already" in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid), timeout=20)
    assert not pidfile.exists() and not cfd.socket.exists()


def test_daemon_that_cannot_start_makes_the_launcher_fail_clearly(cfd):
    import subprocess
    from tests.conftest import PYTHON
    log = cfd.root / "daemon.log"
    bad_socket = "/proc/1/no-such-dir/control.sock"  # the daemon cannot listen there
    started = subprocess.run([PYTHON, "-m", "confabd.master_cli", "--daemon", "--log-file", str(log),
                              "--socket", bad_socket, "--pidfile", str(cfd.root / "bad.pid")],
                             env=cfd.env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    assert "exited before it was ready" in started.stderr and str(log) in started.stderr


def test_sighup_reaches_running_workers(cfd):
    """The reloaded settings go to every running worker (they used to reach new workers only)."""
    backend, eid = cfd.backend, "sighup-worker"
    master = cfd.master()
    path = cfd.transcript(eid)
    append(path, fixture_lines()[:5])
    assert cfd.ctl("start", "--session-id", eid, "--transcript", str(path)).returncode == 0
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
    worker = cfd.session(eid)["worker_pid"]
    archive = cfd.root / "after-sighup.sqlite3"
    config = cfd.home / ".config" / "confabd" / "confabd.toml"
    config.write_text(config.read_text() + f'sink = "archive"\narchive_path = "{archive}"\n')
    master.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "settings reloaded" in master.log_text())
    append(path, fixture_lines()[5:])
    wait_until(lambda: archive.exists() and cfd.session(eid)["files"].get(path.name, {}).get(
        "last_synced_line") == len(fixture_lines()), timeout=20, what="the worker to sync into the new archive")
    assert cfd.session(eid)["worker_pid"] == worker  # the same worker, new settings
    assert len(backend.lines(eid, path.name)) == 5  # nothing more went to the old sink


def test_a_symlink_as_the_log_file_is_refused_and_its_target_untouched(cfd):
    """`--log-file` naming a symlink: the master refuses to start, the link's target keeps its mode and bytes."""
    import subprocess
    from tests.conftest import PYTHON
    target = cfd.root / "precious"
    target.write_bytes(b"not a log\n")
    target.chmod(0o644)
    link = cfd.root / "daemon.log"
    link.symlink_to(target)
    for how in ("--foreground", "--daemon"):
        started = subprocess.run([PYTHON, "-m", "confabd.master_cli", how, "--log-file", str(link)],
                                 env=cfd.env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 1, started.stderr
        assert "symbolic link" in started.stderr and str(link) in started.stderr, started.stderr
        assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.read_bytes() == b"not a log\n"
    assert not cfd.ping()


def test_a_hung_worker_is_killed_and_restarted(cfd):
    """A worker stopped (SIGSTOP: as good as stuck in a syscall or a loop) stays silent past
    worker_timeout_s: the master kills it and starts another, which delivers what came meanwhile."""
    backend, eid = cfd.backend, "hung-worker"
    config = cfd.home / ".config" / "confabd" / "confabd.toml"
    config.write_text(config.read_text() + "worker_timeout_s = 2.0\n")
    cfd.master()
    path = cfd.transcript(eid)
    lines = fixture_lines()
    append(path, lines[:3])
    assert cfd.ctl("start", "--session-id", eid, "--transcript", str(path)).returncode == 0
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
    stuck = cfd.session(eid)["worker_pid"]
    os.kill(stuck, signal.SIGSTOP)
    append(path, lines[3:])
    restarted = wait_until(lambda: (cfd.session(eid)["worker_pid"] or stuck) != stuck and cfd.session(eid),
                           timeout=30, what="a new worker after the hung one")
    assert not pid_alive(stuck)
    assert restarted["restarts"] >= 1
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
    assert_exactly_once(backend, eid, path)
    assert "hung (silent for" in cfd.masters[0].log_text()


LAUNCHER_THAT_DIES = """
import os, sys
from confabd import master_cli
def die(fd, opts):  # the launcher is gone before the daemon is ready: SIGHUP, or its 30 s timeout
    os.close(fd)
    os._exit(9)
master_cli.wait_until_ready = die
sys.exit(master_cli.main(["--daemon", "--log-file", sys.argv[1]]))
"""


def test_a_daemon_whose_launcher_dies_before_it_is_ready_still_serves(cfd):
    """The readiness pipe's reader is gone when the daemon says ready (EPIPE): it used to skip
    its clean-up and hang in multiprocessing's exit-time join, holding the socket and answering
    nothing, so that no new master could start. Now it runs on and answers."""
    import subprocess
    from tests.conftest import PYTHON
    eid = "before-the-daemon"
    path = cfd.transcript(eid)
    append(path, fixture_lines())
    first = cfd.master()  # leaves a session on disk for the daemon to adopt: it has a worker when ready
    assert cfd.ctl("start", "--session-id", eid, "--transcript", str(path)).returncode == 0
    wait_until(lambda: cfd.state_file(eid).exists(), what="its State")
    first.kill9()
    log = cfd.root / "daemon.log"
    launcher = subprocess.run([PYTHON, "-c", LAUNCHER_THAT_DIES, str(log)], env=cfd.env,
                              capture_output=True, text=True, timeout=60, start_new_session=True)
    assert launcher.returncode == 9, launcher.stderr
    pidfile = cfd.socket.parent / "confabd.pid"
    wait_until(lambda: cfd.ping(), timeout=30, what="the daemon to answer")
    pid = int(pidfile.read_text())
    try:
        cfd.backend.wait_for(lambda: backend_has_file(cfd.backend, eid, path), timeout=30)
        assert "running anyway" in log.read_text()
        os.kill(pid, signal.SIGHUP)  # its SIGHUP is a reload again, once it runs
        wait_until(lambda: "settings reloaded" in log.read_text(), what="the reload")
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid), timeout=30)
    assert not cfd.socket.exists() and not pidfile.exists()


def test_a_worker_in_a_long_sync_is_not_taken_for_hung(cfd):
    """A cycle of several slow requests, longer in all than worker_timeout_s (each shorter):
    the worker is heard from before each request, so it is not killed."""
    backend, eid = cfd.backend, "slow-but-alive"
    config = cfd.home / ".config" / "confabd" / "confabd.toml"
    config.write_text(config.read_text() + "worker_timeout_s = 4.0\n")
    backend.delay_next(1, 2.5, "init")
    backend.delay_next(1, 2.5, "chunk")
    master = cfd.master()
    path = cfd.transcript(eid)
    append(path, fixture_lines())
    assert cfd.ctl("start", "--session-id", eid, "--transcript", str(path)).returncode == 0
    first = wait_until(lambda: cfd.session(eid)["worker_pid"], what="its worker")
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
    s = cfd.session(eid)
    assert (s["worker_pid"], s["restarts"]) == (first, 0), master.log_text()
    assert "hung" not in master.log_text()


def test_under_the_journal_each_line_carries_its_priority_and_no_timestamp(cfd):
    """JOURNAL_STREAM names our stderr: `<N>` syslog prefixes (warning is 4), no time or pid of our own."""
    log_path = cfd.root / "journal.log"
    with open(log_path, "wb") as journal:
        info = os.fstat(journal.fileno())
        env = dict(cfd.env, JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")
        proc = subprocess.Popen([PYTHON, "-m", "confabd.master_cli", "--foreground"], env=env, cwd=cfd.root,
                                stdin=subprocess.DEVNULL, stdout=journal, stderr=journal, start_new_session=True)
    try:
        wait_until(cfd.ping, 20, what="the master to listen")
        eid = "journal"
        append(cfd.transcript(eid), fixture_lines()[:3])
        assert cfd.ctl("start", "--session-id", eid, "--transcript", str(cfd.transcript(eid))).returncode == 0
        worker = wait_until(lambda: cfd.session(eid)["worker_pid"], what="the worker")
        os.kill(worker, signal.SIGKILL)  # the master warns that it restarts it
        wait_until(lambda: "restarting in" in log_path.read_text(), what="the restart warning")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = log_path.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>confabd", line) for line in lines), lines
    assert any(line.startswith("<4>") and "restarting in" in line for line in lines), lines
    assert any(line.startswith("<6>") for line in lines)
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines), "journald stamps the time itself"


def test_continue_while_finishing_survives_a_master_crash(cfd):
    """`--continue` registers the session again while its first run is still finishing (its
    session_end refused), then the master and its worker are killed -9. The next master
    finishes the first run and then runs the second: every line of both once, two
    session_end events with their own payloads."""
    backend, eid = cfd.backend, "continued"
    master = cfd.master()
    first = cfd.claude()
    path, lines = cfd.transcript(eid), fixture_lines("coverage-test-fix.jsonl")
    append(path, lines[:10])
    assert first.hook("session-start", cfd.payload(eid, source="startup"))[0] == 0
    backend.wait_for(lambda: len(backend.lines(eid, path.name)) == 10, timeout=20)
    backend.fail_next(10_000, 503, path="event")  # the first run stays finishing
    end_first = cfd.payload(eid, "SessionEnd", reason="exit")
    assert first.hook("session-end", end_first)[0] == 0
    first.kill9()
    wait_until(lambda: (s := cfd.session(eid)) and s["state"] == "finishing", what="finishing")
    wait_until(lambda: any(r["endpoint"] == "event" for r in backend.requests_log()),
               what="the first session_end refused")
    second = cfd.claude()
    assert second.hook("session-start", cfd.payload(eid, source="resume"))[0] == 0
    os.killpg(master.pid, signal.SIGKILL)  # the master and its worker, at once
    master.proc.wait(10)
    backend.clear_faults()
    append(path, lines[10:20])  # the second run writes while no master runs
    cfd.master()
    wait_until(lambda: len(backend.events(eid)) == 1, timeout=30, what="the first run's session_end")
    s = wait_until(lambda: (s := cfd.session(eid)) and s["state"] == "syncing" and s, timeout=30,
                   what="the second run, adopted and syncing")
    assert s["parent_pid"] == second.pid
    append(path, lines[20:])
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
    end_second = cfd.payload(eid, "SessionEnd", reason="prompt_input_exit")
    assert second.hook("session-end", end_second)[0] == 0
    wait_until(lambda: len(backend.events(eid)) == 2 and cfd.session(eid) is None, timeout=30)
    assert [e["payload"] for e in backend.events(eid)] == [end_first, end_second]
    assert_exactly_once(backend, eid, path)
    assert not cfd.state_file(eid).exists() and not cfd.inbox_file(eid).exists()


def test_a_session_end_accepted_as_the_master_dies_is_not_sent_again(cfd):
    """The master is killed -9 while its worker's session_end is held by the backend; a new master
    adopts the session (its worker waits for the orphan's lock); the held session_end then goes
    through. The orphan records it in State and stops; the new worker sends no second one."""
    backend, eid = cfd.backend, "end-once"
    master = cfd.master()
    claude = cfd.claude()
    path = cfd.transcript(eid)
    append(path, fixture_lines()[:6])
    assert claude.hook("session-start", cfd.payload(eid))[0] == 0
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
    held = backend.gate("event")
    end = cfd.payload(eid, "SessionEnd", reason="exit")
    try:
        assert claude.hook("session-end", end)[0] == 0
        wait_until(held.arrived.is_set, what="the session_end held by the backend")
        master.kill9()
        cfd.master()
        wait_until(lambda: cfd.session(eid), what="the session adopted by the new master")
    finally:
        held.release()
    wait_until(lambda: cfd.session(eid) is None and not cfd.state_file(eid).exists(), timeout=30,
               what="the session finished")
    assert [e["payload"] for e in backend.events(eid)] == [end]
    assert_exactly_once(backend, eid, path)


def test_a_state_that_says_session_end_was_sent_is_finished_without_another(cfd):
    """kill -9 after the session_end was accepted and recorded, before State was deleted."""
    backend, eid = cfd.backend, "end-recorded"
    path = cfd.transcript(eid)
    append(path, fixture_lines()[:4])
    cfd.sync_dir.mkdir(parents=True)
    cfd.state_file(eid).write_text(json.dumps({
        "external_id": eid, "transcript_path": str(path), "finishing": True, "session_end_sent": True}))
    cfd.master()
    wait_until(lambda: not cfd.state_file(eid).exists() and cfd.session(eid) is None, timeout=30)
    assert_exactly_once(backend, eid, path)  # the final sync still runs
    assert backend.events(eid) == []


def test_a_session_blocked_at_the_chunk_cap_is_not_retried_until_asked(tmp_path):
    """At the server's chunk cap the final sync can never complete: failed and said why, not
    restarted every 60 s; `confabctl stop` is the retry (and hears the same reason back)."""
    from tests.conftest import Confabd
    from tests.fakebackend import FakeBackend

    with FakeBackend(max_chunks_per_file=2) as capped:
        cfd = Confabd(tmp_path, capped)
        try:
            eid = "capped-master"
            cfd.master()
            path = cfd.transcript(eid)
            append(path, fixture_lines()[:1])
            assert cfd.ctl("start", "--session-id", eid, "--transcript", str(path)).returncode == 0
            for n in (2, 3):
                wait_until(lambda: len(capped.lines(eid, path.name)) == n - 1, what=f"chunk {n - 1}")
                append(path, fixture_lines()[n - 1:n])
            wait_until(lambda: "limit of chunks" in (cfd.session(eid)["last_error"] or ""), what="the cap")
            assert cfd.ctl("stop", eid).returncode == 0
            s = wait_until(lambda: (s := cfd.session(eid)) and s["state"] == "failed" and s, timeout=30,
                           what="the session failed on its blocked file")
            assert "limit of chunks" in s["last_error"] and "not retried by itself" in s["last_error"]
            assert s["worker_pid"] is None
            assert cfd.state_file(eid).exists()
            r = cfd.ctl("stop", eid, "--wait", timeout=60)  # the retry: a worker again, the same answer
            assert r.returncode == 1 and "limit of chunks" in r.stderr, (r.returncode, r.stdout, r.stderr)
            assert cfd.session(eid)["restarts"] == 1 and capped.events(eid) == []
        finally:
            cfd.close()


def held_registration(cfd, eid):
    """A hook's registration on a connection that stays open: (the socket, the reply)."""
    from confabd import client

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(cfd.socket))
    body = json.dumps({"v": 1, "type": "register", "external_id": eid, "transcript_path": str(cfd.transcript(eid)),
                       "cwd": "/home/dev/proj", "parent_pid": os.getpid(), "hook_pid": os.getpid()}).encode()
    sock.sendall(len(body).to_bytes(4, "big") + body)
    size = int.from_bytes(client._recv_exactly(sock, 4), "big")
    return sock, json.loads(client._recv_exactly(sock, size))


def test_a_hook_is_answered_before_its_worker_is_forked_and_a_held_connection_does_not_hold_it(cfd):
    """A hook's session gets its worker once the hook has hung up (the agent waits for the hook, not
    for the fork: issue 15), and anyway soon when it does not hang up."""
    backend, eid = cfd.backend, "held-open"
    cfd.master()
    path = cfd.transcript(eid)
    append(path, fixture_lines()[:5])
    sock, reply = held_registration(cfd, eid)
    try:
        assert reply["ok"] and reply["registered"] and reply["worker_pid"] is None  # answered before the fork
        wait_until(lambda: (cfd.session(eid) or {}).get("worker_pid"), what="the worker, the hook still connected")
        backend.wait_for(lambda: len(backend.lines(eid, path.name)) == 5, timeout=20)
    finally:
        sock.close()


def test_a_shutdown_right_after_a_hooks_registration_still_keeps_its_session(cfd):
    """The master stops before the hook has hung up: the session it answered for is not lost."""
    backend, eid = cfd.backend, "promised"
    master = cfd.master()
    path = cfd.transcript(eid)
    append(path, fixture_lines()[:5])
    sock, reply = held_registration(cfd, eid)
    try:
        assert reply["registered"]
        assert cfd.ctl("shutdown").returncode == 0
        wait_until(lambda: master.proc.poll() is not None, what="the master to stop")
    finally:
        sock.close()
    assert cfd.state_file(eid).exists()
    cfd.master()
    wait_until(lambda: cfd.session(eid), what="the next master to adopt it")
    backend.wait_for(lambda: len(backend.lines(eid, path.name)) == 5, timeout=20)
