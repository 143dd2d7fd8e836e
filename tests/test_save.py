"""`confabctl save` and `confabctl archive`, run as real commands."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakebackend import FakeBackend
from tests.waiting import wait_until
from tests.workers import TRANSCRIPTS, Home, WorkerProcess

CONFABCTL = [sys.executable, "-m", "confabd.ctl"]
REPO = Path(__file__).resolve().parent.parent


def ctl(home: Home, *args: str, stderr=subprocess.PIPE, **env) -> subprocess.CompletedProcess:
    environment = {
        "PATH": os.environ["PATH"], "HOME": str(home.path), "PYTHONPATH": str(REPO),
        "CONFABD_SOCKET": str(home.path / "no-master.sock"), **env,
    }
    return subprocess.run(CONFABCTL + list(args), env=environment, stdout=subprocess.PIPE, stderr=stderr,
                          timeout=120, cwd=str(home.path))


@pytest.fixture
def home(tmp_path):
    home = Home(tmp_path)
    settings = home.path / ".config" / "confabd" / "confabd.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text(f'archive_path = "{home.archive}"\n')
    return home


def test_save_path_to_backend_with_subagent(home):
    eid = "473250f7-35b7-4652-9383-9c93788bab1f"
    shutil.copytree(TRANSCRIPTS.parent / "sessions" / "session-with-subagent" / "project-dir", home.project,
                    dirs_exist_ok=True)
    path = home.transcript(eid)
    agent = home.project / eid / "subagents" / "agent-a4037ca51b08194c6.jsonl"
    with FakeBackend() as backend:
        home.configure_backend(backend.url, backend.api_key)
        result = ctl(home, "save", str(path))
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode()
        assert out.startswith(f"saved {eid}: 51 new line(s) sent, 51 line(s) in 2 file(s)")
        assert backend.file_bytes(eid, path.name) == path.read_bytes()
        assert backend.file_bytes(eid, agent.name) == agent.read_bytes()
        # Saving again sends nothing twice: the backend's count is the position.
        again = ctl(home, "save", eid)  # by session ID this time
        assert again.returncode == 0 and b"0 new line(s) sent" in again.stdout
        assert backend.file_bytes(eid, path.name) == path.read_bytes()


def test_save_to_archive_then_list_and_export(home, tmp_path):
    eid = "archived-one"
    path = home.copy_fixture("python-to-rust-port.jsonl", eid)
    result = ctl(home, "save", str(path))
    assert result.returncode == 0, result.stderr
    assert b"the local archive" in result.stdout
    listing = json.loads(ctl(home, "archive", "list", "--json").stdout)
    [session] = [s for s in listing["sessions"] if s["external_id"] == eid]
    assert session["files"][path.name]["lines"] == 97
    out_dir = tmp_path / "exported"
    export = ctl(home, "archive", "export", eid, "--out", str(out_dir))
    assert export.returncode == 0, export.stderr
    assert (out_dir / path.name).read_bytes() == path.read_bytes()
    missing = ctl(home, "archive", "export", "no-such-session", "--out", str(out_dir))
    assert missing.returncode == 1 and b"no-such-session" in missing.stderr


def test_save_shows_a_progress_bar_on_a_terminal(home):
    eid = "with-progress"
    path = home.copy_fixture("claude-2.1.328-print-and-resume.jsonl", eid)
    master_fd, slave_fd = pty.openpty()
    try:
        result = ctl(home, "save", str(path), stderr=slave_fd)
        os.close(slave_fd)
        shown = b""
        while True:
            try:
                data = os.read(master_fd, 65536)
            except OSError:
                break
            if not data:
                break
            shown += data
    finally:
        os.close(master_fd)
    assert result.returncode == 0
    assert b" 100%  " in shown and path.name.encode() in shown and b"\r" in shown
    assert b" MB" not in result.stdout and result.stdout.startswith(b"saved ")  # line on the terminal, summary on stdout


def test_save_refuses_while_a_worker_syncs_the_session(home):
    eid = "live-session"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    worker = WorkerProcess(home, eid, path, parent_pid=os.getpid())
    try:
        wait_until(lambda: (r := worker.last_report()) and r.phase == "syncing")
        result = ctl(home, "save", str(path))
        assert result.returncode == 1
        assert b"being synced by a running worker" in result.stderr
    finally:
        worker.close()


@pytest.mark.parametrize("target, message", [
    ("/nonexistent/x.jsonl", b"no such transcript file"),
    ("not-a-known-session", b"no transcript for session not-a-known-session"),
    ("../../etc", b"no such transcript file"),
    ("bad id!", b"invalid session id"),
])
def test_save_bad_targets_fail_clearly(home, target, message):
    result = ctl(home, "save", target)
    assert result.returncode == 1
    assert message in result.stderr


def test_save_backend_with_plain_http_to_remote_host_is_refused(home):
    path = home.copy_fixture("hello-world-script.jsonl", "remote-http")
    home.configure_backend("http://confab.example.com", "cfb_" + "k" * 40)
    result = ctl(home, "save", str(path))
    assert result.returncode == 1
    assert b"https" in result.stderr
    assert b"cfb_kkkk" not in result.stderr  # the key never shows


def test_redaction_config_applies_and_unmatched_lines_stay_identical(home):
    eid = "redacted"
    path = home.transcript(eid)
    secret = "ghp_" + "A" * 36
    clean = b'{"type":"user","message":{"content":"hello"},"n":1.50}'
    path.write_bytes(clean + b"\n" + json.dumps({"type": "user", "text": f"token {secret}"}).encode() + b"\n")
    with FakeBackend() as backend:
        home.configure_backend(backend.url, backend.api_key, redaction={"enabled": True})
        result = ctl(home, "save", str(path))
        assert result.returncode == 0, result.stderr
        lines = backend.lines(eid, path.name)
    assert lines[0].encode() == clean  # byte-for-byte, float formatting and all
    assert secret not in lines[1] and "[REDACTED:GITHUB_TOKEN]" in lines[1]
