"""Cursor through its hooks' payloads and transcripts (its CLI is on no registry here, so these are
stand-ins: tests/fixtures/cursor/), a stand-in `cursor-agent` parent, the real master and the
FakeBackend: every line once, the per-chunk metadata, sessionEnd's reason, the parent backstop."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from confabd.providers.cursor import paths
from tests.conftest import PYTHON, Confabd
from tests.data import CURSOR
from tests.waiting import wait_until

START = json.loads((CURSOR / "session-start.json").read_text())
SID = START["session_id"]

AGENT = """\
import json, subprocess, sys
for line in sys.stdin:
    event, path = line.strip().rsplit(" ", 1)
    r = subprocess.run(["/bin/sh", "-c", f"{HOOK} hook {event} --provider cursor < {path}"],
                       capture_output=True, text=True)
    print(json.dumps([r.returncode, r.stdout, r.stderr]), flush=True)
"""


class FakeCursor:
    """A process named cursor-agent that runs Cursor's hooks as its children through /bin/sh -c."""

    def __init__(self, cfd):
        self.cfd = cfd
        script = cfd.root / "bin" / "cursor-agent"
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"HOOK = {PYTHON + ' -m confabd.ctl'!r}\n" + AGENT)
        self.proc = subprocess.Popen([PYTHON, str(script)], env=cfd.env, cwd=cfd.root, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def hook(self, event: str, payload: dict):
        path = self.cfd.root / f"cursor-{event}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(payload))
        self.proc.stdin.write(f"{event} {path}\n")
        self.proc.stdin.flush()
        return tuple(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def cursor(cfd):
    cfd.env["CONFAB_CURSOR_DIR"] = str(cfd.home / ".cursor")
    agent = FakeCursor(cfd)
    yield agent
    agent.close()


def session_files(cfd, workspace: Path) -> tuple[Path, Path]:
    transcript = Path(paths.transcript_path(str(cfd.home / ".cursor"), str(workspace), SID))
    return transcript, transcript.parent / "subagents" / "sub-1.jsonl"


def start_payload(workspace: Path) -> dict:
    return dict(START, workspace_roots=[str(workspace)])


def test_a_cursor_session_is_shipped_with_its_subagent_metadata_and_end_reason(cfd, cursor):
    backend = cfd.backend
    cfd.master()
    workspace = cfd.root / "my proj.v2"  # runs of non-alphanumerics become one '-'
    transcript, subagent = session_files(cfd, workspace)
    assert transcript.parts[-4] == paths.project_name(str(workspace)) and transcript.parts[-3] == "agent-transcripts"
    assert paths.project_name("/tmp/a_b/my proj.v2/") == "tmp-a-b-my-proj-v2"
    code, out, err = cursor.hook("session-start", start_payload(workspace))
    assert (code, out) == (0, "{}\n"), err
    session = cfd.session(SID)
    assert session["provider"] == "cursor" and session["parent_pid"] == cursor.pid
    assert session["transcript_path"] == str(transcript) and session["cwd"] == str(workspace)
    # Cursor writes the transcript after the first prompt: the worker waits while cursor-agent lives
    transcript.parent.mkdir(parents=True)
    shutil.copy(CURSOR / "main.jsonl", transcript)
    subagent.parent.mkdir()
    shutil.copy(CURSOR / "subagent.jsonl", subagent)
    (subagent.parent / "notes.txt").write_text("not a transcript\n")
    chats = cfd.home / ".cursor" / "chats" / "a1b2c3" / SID
    chats.mkdir(parents=True)
    shutil.copy(CURSOR / "meta.json", chats / "meta.json")
    backend.wait_for(lambda: backend.file_bytes(SID, transcript.name) == transcript.read_bytes()
                     and backend.file_bytes(SID, "subagents/sub-1.jsonl") == subagent.read_bytes(), timeout=30)
    assert backend.file_types(SID) == {transcript.name: "transcript", "subagents/sub-1.jsonl": "agent"}
    meta = backend.metadata(SID)
    assert meta["first_user_message"] == "Make the CSV importer skip blank rows & add a test."
    assert meta["model"] == "composer-2.5-fast" and meta["cwd"] == str(workspace)
    mtime = datetime.datetime.fromtimestamp(transcript.stat().st_mtime, datetime.timezone.utc)
    assert datetime.datetime.fromisoformat(meta["latest_message_at"].replace("Z", "+00:00")) == \
        mtime.replace(microsecond=mtime.microsecond // 1000 * 1000)
    # a title over the server's 2,048 bytes is cut (the Go client's 4,096 failed every chunk)
    (chats / "meta.json").write_text(json.dumps({"title": "é" * 3000}))
    with transcript.open("a") as fh:
        fh.write('{"role":"user","message":{"content":[{"type":"text","text":"one more"}]}}\n')
    backend.wait_for(lambda: backend.file_bytes(SID, transcript.name) == transcript.read_bytes(), timeout=30)
    backend.wait_for(lambda: backend.metadata(SID).get("summary", "").startswith("éé"), timeout=30)
    assert len(backend.metadata(SID)["summary"].encode()) <= 2048
    assert meta["first_user_message"] == backend.metadata(SID)["first_user_message"]

    code, out, err = cursor.hook("session-end", dict(json.loads((CURSOR / "session-end.json").read_text()),
                                                     workspace_roots=[str(workspace)]))
    assert (code, out) == (0, "{}\n"), err
    backend.wait_for(lambda: backend.events(SID), timeout=30)
    [event] = backend.events(SID)
    assert event["payload"] == {"session_id": SID, "transcript_path": str(transcript), "cwd": "",
                                "permission_mode": "", "hook_event_name": "SessionEnd", "reason": "completed"}
    wait_until(lambda: cfd.session(SID) is None and not cfd.state_file(SID).exists(), 30,
               what="the session to finish")
    for name, path in ((transcript.name, transcript), ("subagents/sub-1.jsonl", subagent)):
        assert backend.lines(SID, name) == path.read_text().splitlines()  # every line, once


def test_without_a_session_end_the_parents_exit_ends_it(cfd, cursor):
    cfd.master()
    workspace = cfd.root / "w"
    transcript, _ = session_files(cfd, workspace)
    transcript.parent.mkdir(parents=True)
    shutil.copy(CURSOR / "main.jsonl", transcript)
    assert cursor.hook("session-start", start_payload(workspace))[0] == 0
    cfd.backend.wait_for(lambda: cfd.backend.file_bytes(SID, transcript.name) == transcript.read_bytes(), timeout=30)
    cursor.proc.kill()
    cfd.backend.wait_for(lambda: cfd.backend.events(SID), timeout=30)
    assert cfd.backend.events(SID)[0]["payload"]["confabd_reason"] == f"Cursor (pid {cursor.pid}) exited"
    wait_until(lambda: cfd.session(SID) is None, 30, what="the session to finish")


def test_bad_cursor_input_is_said_and_never_fails_cursor(cfd):
    for payload, why in (({"session_id": SID}, "neither transcript_path nor an absolute workspace_roots"),
                         ({"session_id": SID, "workspace_roots": ["relative"]}, "neither transcript_path"),
                         ({"session_id": SID, "transcript_path": "a/../b.jsonl"}, "not an absolute path"),
                         ({"session_id": "../x", "workspace_roots": ["/w"]}, "invalid session id")):
        r = cfd.ctl("hook", "session-start", "--provider", "cursor", input=json.dumps(payload))
        assert (r.returncode, r.stdout) == (0, "{}\n") and why in r.stderr, r.stderr


def test_install_keeps_the_users_hooks_replaces_the_go_clients_and_uninstalls(cfd):
    cfd.env["CONFAB_CURSOR_DIR"] = str(cfd.home / ".cursor")
    hooks = cfd.home / ".cursor" / "hooks.json"
    hooks.parent.mkdir()
    mine = {"version": 1, "theme": "mine", "hooks": {
        "sessionStart": [{"command": "echo hi", "type": "command"},
                         {"command": "/usr/local/bin/confab hook session-start --provider cursor", "type": "command"}],
        "stop": [{"command": "echo bye", "type": "command"}]}}
    hooks.write_text(json.dumps(mine))
    r = cfd.ctl("install-hooks", "--provider", "cursor")
    assert r.returncode == 0, r.stderr
    data = json.loads(hooks.read_text())
    assert data["theme"] == "mine" and data["hooks"]["stop"] == mine["hooks"]["stop"]
    starts = [e["command"] for e in data["hooks"]["sessionStart"]]
    assert starts[0] == "echo hi" and len(starts) == 2 and "confabd.ctl hook session-start --provider cursor" in starts[1]
    assert "hook session-end --provider cursor" in data["hooks"]["sessionEnd"][0]["command"]
    assert oct(hooks.stat().st_mode & 0o777) == "0o600"
    text = hooks.read_text()
    r = cfd.ctl("install-hooks", "--provider", "cursor")
    assert r.returncode == 0 and "already" in r.stdout and hooks.read_text() == text
    assert cfd.ctl("uninstall-hooks", "--provider", "cursor").returncode == 0
    data = json.loads(hooks.read_text())
    assert data == {"version": 1, "theme": "mine", "hooks": {"sessionStart": [{"command": "echo hi", "type": "command"}],
                                                             "stop": mine["hooks"]["stop"]}}


def test_a_cursor_session_in_the_local_archive_exports_its_subagent_files(tmp_path):
    """No backend: the archive keeps `subagents/<name>` and `archive export` writes it back below the session."""
    cfd = Confabd(tmp_path, None)
    try:
        cfd.env["CONFAB_CURSOR_DIR"] = str(cfd.home / ".cursor")
        cfd.master()
        workspace = tmp_path / "w"
        transcript, subagent = session_files(cfd, workspace)
        subagent.parent.mkdir(parents=True)
        shutil.copy(CURSOR / "main.jsonl", transcript)
        shutil.copy(CURSOR / "subagent.jsonl", subagent)
        agent = FakeCursor(cfd)
        try:
            assert agent.hook("session-start", start_payload(workspace))[0] == 0
            assert cfd.ctl("stop", SID, "--wait").returncode == 0
        finally:
            agent.close()
        out = tmp_path / "out"
        r = cfd.ctl("archive", "export", SID, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert (out / transcript.name).read_bytes() == transcript.read_bytes()
        assert (out / "subagents" / "sub-1.jsonl").read_bytes() == subagent.read_bytes()
        listing = cfd.ctl("archive", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        assert [(s["external_id"], s["provider"]) for s in json.loads(listing.stdout)["sessions"]] == [(SID, "cursor")]
    finally:
        cfd.close()


def test_metrics_count_sessions_by_agent(cfd, cursor):
    """A Cursor session beside a Claude Code one: `metrics` counts each agent's (every agent listed)."""
    from tests.test_operability import parse_prometheus, sample

    cfd.master()
    workspace = cfd.root / "w"
    transcript, _ = session_files(cfd, workspace)
    transcript.parent.mkdir(parents=True)
    shutil.copy(CURSOR / "main.jsonl", transcript)
    assert cursor.hook("session-start", start_payload(workspace))[0] == 0
    claude = cfd.transcript("claude-metrics-1")
    claude.write_text('{"type":"user","message":{"role":"user","content":"hi"}}\n')
    assert cfd.ctl("register", "--session-id", "claude-metrics-1", "--transcript", str(claude)).returncode == 0
    wait_until(lambda: cfd.session(SID) and cfd.session("claude-metrics-1"), 30, what="both sessions")
    r = cfd.ctl("metrics")
    assert r.returncode == 0, r.stderr
    samples = parse_prometheus(r.stdout)
    assert {p: sample(samples, "confabd_provider_sessions", provider=p)
            for p in ("claude-code", "codex", "cursor", "opencode")} == \
        {"claude-code": 1, "codex": 0, "cursor": 1, "opencode": 0}
    as_json = json.loads(cfd.ctl("metrics", "--json").stdout)
    assert as_json["providers"] == {"claude-code": 1, "codex": 0, "cursor": 1, "opencode": 0}
