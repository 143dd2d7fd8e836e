"""confabctl and the hooks: bad input, no master, the control protocol's edges, the hook's import cost."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess

import psutil
import pytest

from confabd import __version__

from confabd import client
from tests.conftest import PYTHON, backend_has_file, fixture_lines
from tests.waiting import wait_until

RESPONSE = {"continue": True, "suppressOutput": True}


def hook_ok(result) -> str:
    """The hook printed the response and exited 0; returns its stderr."""
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == RESPONSE
    return result.stderr


def test_hook_bad_input_always_exits_0_with_a_clear_message(cfd):
    master = cfd.master()
    cases = {
        "malformed": ("{not json", "not valid JSON"),
        "empty": ("", "empty hook input"),
        "huge": ('{"session_id": "' + "a" * (2 << 20) + '"}', "larger than"),
        "invalid id": (json.dumps({"session_id": "../../etc/passwd", "transcript_path": "/x"}), "invalid session id"),
        "dot id": (json.dumps({"session_id": ".hidden", "transcript_path": "/x"}), "invalid session id"),
        "not an object": ("[1, 2]", "not a JSON object"),
    }
    for event in ("session-start", "session-end"):
        for name, (data, message) in cases.items():
            err = hook_ok(cfd.hook(event, data))
            assert message in err, (event, name, err)
    assert cfd.status()["sessions"] == []
    assert not cfd.sync_dir.exists() or not any(cfd.sync_dir.iterdir())
    assert master.proc.poll() is None


def test_hook_unknown_event_and_unknown_session(cfd):
    cfd.master()
    assert "usage" in hook_ok(cfd.ctl("hook", "bogus", input="{}"))
    err = hook_ok(cfd.hook("session-end", cfd.payload("never-started", "SessionEnd")))
    assert "no session 'never-started'" in err
    assert not cfd.inbox_file("never-started").exists()  # the orphan inbox record is cleaned up


def test_hook_help_prints_help_not_a_hook_answer(cfd):
    for flag in ("--help", "-h"):
        result = cfd.ctl("hook", flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: confabctl hook"), result.stdout
        assert "session-start" in result.stdout and "exits 0, always" in result.stdout
        assert "continue" not in result.stdout.splitlines()[0] and result.stderr == ""
    result = cfd.ctl("hook", "session-start", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: confabctl hook")


def test_no_master_and_none_can_start_leaves_a_state_for_the_next(cfd):
    """The socket's dir cannot be created: the hook records the session on disk and says so."""
    blocker = cfd.root / "not-a-dir"
    blocker.write_text("")
    env = dict(cfd.env, CONFABD_SOCKET=str(blocker / "control.sock"))
    eid = "no-master"
    path = cfd.transcript(eid)
    path.write_bytes(b"".join(fixture_lines()))
    claude = cfd.claude(env)
    code, out, err = claude.hook("session-start", cfd.payload(eid))
    assert code == 0 and json.loads(out) == RESPONSE
    assert "recorded in" in err and str(cfd.state_file(eid)) in err
    state = json.loads(cfd.state_file(eid).read_text())
    assert state["external_id"] == eid and state["transcript_path"] == str(path)
    assert state["parent_pid"] == claude.pid
    # the exact process, not just its pid: a recycled pid will not pass for it later
    assert abs(state["parent_create_time"] - psutil.Process(claude.pid).create_time()) < 0.05
    assert oct(os.stat(cfd.state_file(eid)).st_mode & 0o777) == "0o600"
    assert not [p for p in cfd.sync_dir.iterdir() if p.name.endswith(".tmp")]

    code, out, err = claude.hook("session-end", cfd.payload(eid, "SessionEnd", reason="exit"))
    assert code == 0 and "recorded in" in err
    assert cfd.inbox_file(eid).exists()

    # The next master (on a usable socket) adopts it and, seeing the SessionEnd, finishes it.
    cfd.master()
    backend = cfd.backend
    backend.wait_for(lambda: backend.events(eid), timeout=15)
    assert backend_has_file(backend, eid, path)
    assert backend.events(eid)[0]["payload"]["reason"] == "exit"
    wait_until(lambda: not cfd.state_file(eid).exists() and not cfd.inbox_file(eid).exists())


def test_hook_auto_starts_a_master(cfd):
    eid = "autostart"
    path = cfd.transcript(eid)
    path.write_bytes(b"".join(fixture_lines()))
    assert cfd.ctl("ping").returncode == 3
    assert hook_ok(cfd.hook("session-start", cfd.payload(eid))) == ""
    status = cfd.status()
    pid = status["master"]["pid"]
    try:
        assert [s["external_id"] for s in status["sessions"]] == [eid]
        cfd.backend.wait_for(lambda: backend_has_file(cfd.backend, eid, path), timeout=20)
        assert (cfd.home / ".confab" / "logs" / "confabd.log").exists()
    finally:
        assert cfd.ctl("shutdown").returncode == 0
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=20)


def test_commands_and_exit_codes(cfd):
    assert cfd.ctl("status").returncode == 3
    assert cfd.ctl("stop", "x").returncode == 3
    assert cfd.ctl("shutdown").returncode == 3
    assert cfd.ctl("frobnicate").returncode == 2
    assert cfd.ctl("stop").returncode == 2
    r = cfd.ctl("--version")
    assert r.returncode == 0 and "confabctl" in r.stdout
    master = cfd.master()
    r = cfd.ctl("ping")
    assert r.returncode == 0 and str(master.pid) in r.stdout
    r = cfd.ctl("ping", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"pid": master.pid, "version": __version__,
                                                         "socket": str(cfd.socket)}
    eid = "cmds"
    path = cfd.transcript(eid)
    path.write_bytes(b"".join(fixture_lines()))
    assert cfd.ctl("register", "--session-id", eid, "--transcript", str(path)).returncode == 0
    r = cfd.ctl("start", "--session-id", eid, "--transcript", str(path))  # the old spelling still works
    assert r.returncode == 0 and "already registered" in r.stdout
    r = cfd.ctl("start", "--session-id", eid, "--transcript", str(path) + ".other")
    assert r.returncode == 1 and "refusing a second registration" in r.stderr
    r = cfd.ctl("start", "--session-id", "../bad", "--transcript", str(path))
    assert r.returncode == 2 and "invalid session id" in r.stderr
    r = cfd.ctl("start", "--session-id", "p", "--transcript", str(path), "--parent-pid", "999999999")
    assert r.returncode == 1 and "does not exist" in r.stderr
    cfd.backend.wait_for(lambda: backend_has_file(cfd.backend, eid, path), timeout=20)
    wait_until(lambda: cfd.session(eid)["files"])
    table = cfd.ctl("status").stdout
    assert "SESSION" in table and eid in table and "syncing" in table and str(master.pid) in table
    assert cfd.ctl("status", "nope").returncode == 1
    assert [s["external_id"] for s in cfd.status(eid)["sessions"]] == [eid]
    r = cfd.ctl("stop", eid, "--wait")
    assert r.returncode == 0 and "finished" in r.stdout
    assert len(cfd.backend.events(eid)) == 1  # --wait returned after the final sync
    assert cfd.session(eid) is None
    assert cfd.ctl("stop", eid).returncode == 1
    assert cfd.ctl("shutdown").returncode == 0
    assert master.proc.wait(20) == 0


def raw_request(path, payload: bytes, header: bytes = None) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall((header if header is not None else struct.pack(">I", len(payload))) + payload)
        size = struct.unpack(">I", s.recv(4))[0]
        data = b""
        while len(data) < size:
            data += s.recv(size - len(data))
        return json.loads(data)


def test_malformed_and_oversized_requests_get_error_replies(cfd):
    master = cfd.master()
    sock = cfd.socket
    assert "malformed" in raw_request(sock, b"\xff\xfe not json")["error"]
    assert "malformed" in raw_request(sock, b'{"type": "explode", "v": 1}')["error"]
    assert "malformed" in raw_request(sock, b'{"type": "register", "v": 1}')["error"]
    assert "version" in raw_request(sock, b'{"type": "ping", "v": 99}')["error"]
    reply = raw_request(sock, b"", header=struct.pack(">I", 64 << 20))
    assert reply["ok"] is False and "exceeds" in reply["error"]
    reply = raw_request(sock, json.dumps({"type": "register", "v": 1, "external_id": "x/y",
                                          "transcript_path": "/t"}).encode())
    assert "invalid session id" in reply["error"]
    with socket.socket(socket.AF_UNIX) as s:  # a client that vanishes mid-frame
        s.connect(str(sock))
        s.sendall(struct.pack(">I", 100) + b"{")
    # Two requests in one write are answered in order on one connection.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        body = b'{"type":"ping","v":1}'
        s.sendall((struct.pack(">I", len(body)) + body) * 2)
        data = b""
        while data.count(b'"ok":true') < 2:
            data += s.recv(4096)
    assert master.proc.poll() is None and cfd.ping()


def test_hook_imports_stay_light(cfd, tmp_path):
    """The hook path imports no msgspec, psutil, requests, backoff or argparse."""
    payload = tmp_path / "in.json"
    payload.write_text(json.dumps(cfd.payload("light")))
    env = dict(cfd.env, CONFABD_SOCKET=str(tmp_path / "nothing" / "here.sock"))
    with open(payload) as stdin:
        r = subprocess.run([PYTHON, "-X", "importtime", "-c",
                            "import sys; from confabd.ctl import hook; sys.exit(hook(['session-end']))"],
                           stdin=stdin, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    for heavy in ("msgspec", "psutil", "requests", "backoff", "argparse", "socket", "subprocess"):
        assert heavy not in imported, heavy


def test_client_socket_resolution(tmp_path, monkeypatch):
    env = {"HOME": str(tmp_path)}
    assert client.socket_path(env) == (str(tmp_path / ".confab" / "run" / "control.sock"), False)
    assert client.socket_path(dict(env, CONFABD_SOCKET="/x.sock")) == ("/x.sock", False)
    (tmp_path / "rt").mkdir()
    assert client.socket_path(dict(env, XDG_RUNTIME_DIR=str(tmp_path / "rt")))[0] == \
        str(tmp_path / "rt" / "confabd" / "control.sock")
    settings = tmp_path / ".config" / "confabd" / "confabd.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text('socket = "/from/config.sock"\n')
    assert client.socket_path(env) == ("/from/config.sock", False)


def test_client_socket_candidates_order(tmp_path):
    """CONFABD_SOCKET alone; else the user socket, then the system one (CONFABD_SYSTEM_SOCKET)."""
    env = {"HOME": str(tmp_path), "CONFABD_SYSTEM_SOCKET": str(tmp_path / "sys.sock")}
    user = str(tmp_path / ".confab" / "run" / "control.sock")
    assert client.socket_candidates(env) == [(user, False), (str(tmp_path / "sys.sock"), True)]
    assert client.socket_candidates(dict(env, CONFABD_SOCKET="/x.sock")) == [("/x.sock", False)]
    assert client.socket_candidates({"HOME": str(tmp_path)})[1] == ("/run/confabd/control.sock", True)
    with pytest.raises(client.NoMaster) as info:
        client.request_any({"type": "ping"}, env=env)
    assert user in str(info.value) and "sys.sock" in str(info.value)


def write_unrun_state(cfd, eid):
    """A session the running master does not know: its State file appears after the master started
    (a hook's fallback while no master answered, or a master that died before it could adopt it)."""
    path = cfd.transcript(eid)
    path.write_bytes(b"".join(fixture_lines()))
    cfd.sync_dir.mkdir(parents=True, exist_ok=True)
    cfd.state_file(eid).write_text(json.dumps({"external_id": eid, "transcript_path": str(path)}))
    assert cfd.session(eid) is None
    return path


def test_stop_wait_on_a_state_the_master_does_not_run_returns_once_it_is_finished(cfd):
    """Bug: `stop --wait` printed "finished" at once while the final sync was still to come."""
    eid = "stop-wait-unrun"
    cfd.master()
    path = write_unrun_state(cfd, eid)
    cfd.backend.delay_next(1000, 0.3, path="chunk")  # a final sync that takes a while
    r = cfd.ctl("stop", eid, "--wait")
    assert r.returncode == 0 and "finished" in r.stdout, r.stderr
    assert not cfd.state_file(eid).exists()  # finished means finished: State and inbox gone
    assert [e["event_type"] for e in cfd.backend.events(eid)] == ["session_end"]
    assert backend_has_file(cfd.backend, eid, path)
    assert cfd.session(eid) is None


def test_stop_without_wait_says_finishing_not_finished(cfd):
    eid = "stop-nowait"
    cfd.master()
    write_unrun_state(cfd, eid)
    cfd.backend.delay_next(1000, 0.3, path="chunk")
    r = cfd.ctl("stop", eid)
    assert r.returncode == 0 and "finishing" in r.stdout and "finished" not in r.stdout, r.stderr
    cfd.backend.wait_for(lambda: cfd.backend.events(eid), timeout=30)


def test_session_end_after_stop_says_stop_requested(cfd):
    """Bug: the master sent the worker only `finish: bool`, so the reason read
    "adopted after its Claude Code exited" whatever it was."""
    eid = "stop-reason"
    cfd.master()
    write_unrun_state(cfd, eid)
    assert cfd.ctl("stop", eid).returncode == 0
    cfd.backend.wait_for(lambda: cfd.backend.events(eid), timeout=30)
    (event,) = cfd.backend.events(eid)
    assert event["event_type"] == "session_end"
    assert event["payload"]["confabd_reason"] == "stop requested"
    assert event["payload"]["session_id"] == eid


def test_stop_on_a_corrupt_state_is_an_error_and_keeps_its_files(cfd):
    eid = "corrupt-state"
    cfd.master()
    cfd.sync_dir.mkdir(parents=True, exist_ok=True)
    cfd.state_file(eid).write_text("{not json")
    cfd.inbox_file(eid).write_text('{"type":"session_end"}\n')
    r = cfd.ctl("stop", eid, "--wait")
    assert r.returncode == 1 and f"no session '{eid}'" in r.stderr and "corrupt" in r.stderr, r.stderr
    assert cfd.state_file(eid).read_text() == "{not json" and cfd.inbox_file(eid).exists()


def status_on_a_terminal(cfd, env):
    """`confabctl status` with its stdout on a pseudo-terminal: what a person sees."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([PYTHON, "-m", "confabd.ctl", "status"], env=env, stdout=follower,
                            stderr=subprocess.PIPE, cwd=cfd.root)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(30) == 0, proc.stderr.read()
    return b"".join(chunks).decode()


def test_status_fits_the_terminal_and_colours_only_a_terminal(cfd):
    cfd.master()
    for i in range(3):
        eid = f"c7d3d95c-57f0-4359-8f4b-926a9bef5a3{i}"
        path = cfd.transcript(eid)
        path.write_bytes(b"".join(fixture_lines()[:3]))
        r = cfd.ctl("start", "--session-id", eid, "--transcript", str(path), "--cwd", "/home/dev/a-project")
        assert r.returncode == 0, r.stderr
    wait_until(lambda: all(s["state"] == "syncing" for s in cfd.status()["sessions"]), what="three sessions syncing")
    narrow = cfd.ctl("status", env=dict(cfd.env, COLUMNS="80"))
    assert narrow.returncode == 0, narrow.stderr
    rows = narrow.stdout.splitlines()
    assert len(rows) == 6 and all(len(row) <= 80 for row in rows), rows
    assert rows[1] == f"lines go to {cfd.backend.url}"  # one sink for all: said once, not a column
    assert "PROJECT" in rows[2] and "BEHIND" in rows[2] and "SINK" not in rows[2]
    assert rows[3].split()[1] == "a-project" and "c7d3d95c…" in rows[3]
    piped = cfd.ctl("status")  # a pipe: every column and whole ids, no colour
    assert "c7d3d95c-57f0-4359-8f4b-926a9bef5a30" in piped.stdout and "\033[" not in piped.stdout
    shown = status_on_a_terminal(cfd, dict(cfd.env, TERM="xterm"))
    assert "\033[32msyncing" in shown
    plain = status_on_a_terminal(cfd, dict(cfd.env, TERM="xterm", NO_COLOR="1"))
    assert "\033[" not in plain and "syncing" in plain


def test_a_closed_pipe_is_not_an_error(cfd):
    """`confabctl status --json | head -0`: the reader is gone; no message, no traceback, exit as SIGPIPE."""
    cfd.master()
    for args in (["status", "--json"], ["status"], ["archive", "list"], ["ping", "--json"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader exited before we wrote: every write is EPIPE
        r = subprocess.run([PYTHON, "-m", "confabd.ctl", *args], env=cfd.env, cwd=cfd.root,
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30)
        os.close(write_end)
        assert r.stderr == "", (args, r.stderr)
        assert r.returncode == 141, (args, r.returncode)


def test_every_session_start_source_registers_the_session_it_names(cfd):
    """startup, resume, clear, fork (Claude Code 2.1.330's own hook inputs) and compact: each registers
    the session its session_id names; a session that already runs is left as it is (README: SessionStart
    sources)."""
    from tests.data import HOOK_INPUT

    master = cfd.master()
    inputs = sorted((HOOK_INPUT / "real-2.1.330").glob("*SessionStart*.json"))
    payloads = [json.loads(p.read_text()) for p in inputs]
    payloads.append(dict(payloads[0], source="compact"))  # same session as the first: already running
    assert {p["source"] for p in payloads} == {"startup", "resume", "clear", "fork", "compact"}
    for payload in payloads:
        path = cfd.transcript(payload["session_id"])
        path.write_bytes(b"".join(fixture_lines()[:2]))
        payload = dict(payload, transcript_path=str(path), cwd=str(cfd.root))
        assert hook_ok(cfd.hook("session-start", payload)) == "", payload["source"]
    ids = {p["session_id"] for p in payloads}
    sessions = wait_until(lambda: (s := cfd.status()["sessions"]) and {x["external_id"] for x in s} == ids and s,
                          what="one session per id")
    assert len(sessions) == len(ids) == len(payloads) - 1 and all(s["restarts"] == 0 for s in sessions)
    assert master.proc.poll() is None
