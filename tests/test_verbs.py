"""`confabctl retry`, `forget` and `reload` through a real master, real workers and the test backend."""

from __future__ import annotations

import os
import signal

from tests.conftest import backend_has_file, fixture_lines
from tests.waiting import wait_until


def append(path, lines):
    with open(path, "ab") as f:
        f.writelines(lines)


def register(cfd, eid, lines):
    path = cfd.transcript(eid)
    append(path, lines)
    r = cfd.ctl("register", "--session-id", eid, "--transcript", str(path))
    assert r.returncode == 0, r.stderr
    return path


def crash_until_failed(cfd, eid):
    """kill -9 each new worker of `eid` until the master calls the session failed (5 crashes)."""
    killed = set()
    while True:
        s = wait_until(lambda: (x := cfd.session(eid)) and (x["state"] == "failed" or
                                                            x["worker_pid"] not in killed | {None}) and x,
                       timeout=30, what="the next worker, or failed")
        if s["state"] == "failed":
            return s
        os.kill(s["worker_pid"], signal.SIGKILL)
        killed.add(s["worker_pid"])


def test_retry_resumes_a_failed_session_now_with_its_crash_count_reset(cfd):
    backend, eid = cfd.backend, "retry-me-0123456789"
    lines = fixture_lines()
    cfd.master()
    path = register(cfd, eid, lines[:3])
    s = crash_until_failed(cfd, eid)
    assert s["worker_pid"] is None and "trying again every 300 s" in s["last_error"]
    append(path, lines[3:])  # written while nothing runs: only a retry delivers it before 300 s
    r = cfd.ctl("retry", "retry-me")  # a unique prefix, as `save` takes
    assert r.returncode == 0, r.stderr
    assert f"session {eid}: was failed, retrying now" in r.stdout
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
    s = wait_until(lambda: (x := cfd.session(eid)) and x["state"] == "syncing" and x, what="syncing again")
    assert s["last_error"] is None and s["worker_pid"]
    assert cfd.ctl("status").returncode == 0  # no failed session left
    # The crash count started again: one more crash is a backoff, not failed.
    os.kill(s["worker_pid"], signal.SIGKILL)
    s = wait_until(lambda: (x := cfd.session(eid)) and x["worker_pid"] != s["worker_pid"] and x,
                   what="the crash to be seen")
    assert s["state"] != "failed", s
    assert len(backend.events(eid)) == 0  # still a live session: nothing ended it


def test_retry_tries_a_blocked_file_again_at_once(cfd):
    backend, eid = cfd.backend, "blocked-by-400"
    lines = fixture_lines()
    cfd.master()
    backend.fail_next(1, 400, path="chunk")  # a refused chunk blocks the file until a new sink
    path = register(cfd, eid, lines)
    wait_until(lambda: "400" in ((cfd.session(eid) or {}).get("last_error") or ""), timeout=30,
               what="the refused chunk in status")
    assert not backend_has_file(backend, eid, path)
    r = cfd.ctl("retry", eid)
    assert r.returncode == 0, r.stderr
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)


def test_retry_of_an_unknown_session_and_an_ambiguous_prefix(cfd):
    cfd.master()
    r = cfd.ctl("retry", "nope")
    assert (r.returncode, r.stderr.strip()) == (1, "confabctl: no session 'nope'")
    for eid in ("twin-a", "twin-b"):
        register(cfd, eid, fixture_lines())
    r = cfd.ctl("retry", "twin")
    assert r.returncode == 2 and "is the start of 2 sessions" in r.stderr, r.stderr


def test_forget_drops_a_failed_session_without_a_session_end(cfd):
    backend, eid = cfd.backend, "forget-me"
    cfd.master()
    path = register(cfd, eid, fixture_lines())
    crash_until_failed(cfd, eid)
    cfd.inbox_file(eid).write_text('{"type": "session_end", "timestamp": "", "hook_input": {}}\n')
    # No terminal and no --yes: refused, nothing touched.
    r = cfd.ctl("forget", eid, input="")
    assert r.returncode == 2 and "--yes" in r.stderr, r.stderr
    assert cfd.state_file(eid).exists() and cfd.session(eid)["state"] == "failed"
    r = cfd.ctl("forget", "forget-m", "--yes")
    assert r.returncode == 0, r.stderr
    assert "forgotten (was failed)" in r.stdout
    assert cfd.session(eid) is None
    assert not cfd.state_file(eid).exists() and not cfd.inbox_file(eid).exists()
    assert backend.events(eid) == []  # given up on: never reported as ended
    assert path.exists()  # the transcript is the user's: kept
    assert cfd.ctl("forget", eid, "--yes").returncode == 1  # gone for good


def test_forget_refuses_a_running_session_and_removes_a_state_no_master_runs(cfd):
    backend, eid = cfd.backend, "running"
    master = cfd.master()
    path = register(cfd, eid, fixture_lines())
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
    r = cfd.ctl("forget", eid, "--yes")
    assert r.returncode == 1 and "confabctl stop" in r.stderr, r.stderr
    assert cfd.session(eid)["state"] == "syncing"
    # A State on disk that this master does not run (a hook's fallback, written while it was
    # unreachable: only a master's start or `handover` adopts it) is forgotten too.
    orphan = "orphan-1"
    cfd.state_file(orphan).write_text(cfd.state_file(eid).read_text().replace(eid, orphan))
    assert cfd.session(orphan) is None
    r = cfd.ctl("forget", "orph", "--yes")
    assert r.returncode == 0 and "forgotten (was on disk)" in r.stdout, (r.stdout, r.stderr)
    assert not cfd.state_file(orphan).exists() and cfd.state_file(eid).exists()
    assert master.proc.poll() is None


def test_reload_reports_a_good_and_a_bad_config(cfd):
    config = cfd.home / ".config" / "confabd" / "confabd.toml"
    master = cfd.master()
    config.write_text(config.read_text() + "failed_retry_s = 7.0\n")
    r = cfd.ctl("reload")
    assert r.returncode == 0, r.stderr
    assert "settings reloaded" in r.stdout
    wait_until(lambda: "confabctl reload: settings reloaded" in master.log_text())
    config.write_text(config.read_text() + 'sync_interval_ms = "fast"\nsink = "s3"\n')
    r = cfd.ctl("reload")
    assert r.returncode == 1
    assert "settings not reloaded, the current ones are kept" in r.stderr
    assert "sync_interval_ms" in r.stderr and "sink must be auto, http or archive" in r.stderr  # every problem
    assert master.proc.poll() is None and cfd.ping()


def forget_on_a_terminal(cfd, eid, answer: str) -> tuple[int, str]:
    """`confabctl forget ID` with a real terminal (a pty) as stdin and stdout, answering `answer`."""
    import pty
    import subprocess
    import sys

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "confabd.ctl", "forget", eid], env=cfd.env, cwd=cfd.root,
                            stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = b""
    while b"[y/N]" not in seen:
        chunk = os.read(primary, 4096)
        assert chunk, seen
        seen += chunk
    os.write(primary, answer.encode() + b"\n")
    code = proc.wait(60)
    try:
        while chunk := os.read(primary, 4096):
            seen += chunk
    except OSError:  # EIO: the terminal's last reader is gone
        pass
    os.close(primary)
    return code, seen.decode(errors="replace")


def test_forget_says_what_is_lost_and_asks_on_a_terminal(cfd):
    eid = "ask-first"
    cfd.master()
    register(cfd, eid, fixture_lines())
    crash_until_failed(cfd, eid)
    code, text = forget_on_a_terminal(cfd, eid, "n")
    assert code == 1 and "not forgotten" in text, text
    assert "no session_end is sent" in text and f"confabctl save {eid}" in text and "crash loop" in text
    assert cfd.state_file(eid).exists() and cfd.session(eid)["state"] == "failed"
    code, text = forget_on_a_terminal(cfd, eid, "y")
    assert code == 0 and "forgotten (was failed)" in text, text
    assert not cfd.state_file(eid).exists() and cfd.session(eid) is None
