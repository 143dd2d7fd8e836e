"""`confabctl list` and `save` for every agent's sessions (confabd.local_sessions), through the real
commands, the FakeBackend and real files: Codex rollouts and their state DB (tests/test_codex.py's
CodexTree), Cursor's recorded transcripts (tests/fixtures/cursor/), an OpenCode session's collected file."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from confabd.providers.cursor import paths as cursor_paths
from tests.conftest import backend_has_file
from tests.data import CURSOR
from tests.test_codex import CodexTree
from tests.test_listing import make_session

CURSOR_SID = json.loads((CURSOR / "session-start.json").read_text())["session_id"]


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def cursor_session(cfd, workspace="/home/dev/cursor-proj") -> tuple[Path, Path]:
    transcript = Path(cursor_paths.transcript_path(str(cfd.home / ".cursor"), workspace, CURSOR_SID))
    subagent = transcript.parent / "subagents" / "sub-1.jsonl"
    subagent.parent.mkdir(parents=True)
    shutil.copy(CURSOR / "main.jsonl", transcript)
    shutil.copy(CURSOR / "subagent.jsonl", subagent)
    return transcript, subagent


def opencode_session(cfd, sid="ses_0123456789abcdefghij") -> Path:
    path = cfd.home / ".confab" / "opencode" / sid / "messages.jsonl"
    path.parent.mkdir(parents=True)
    message = {"info": {"id": "msg_1", "role": "user", "sessionID": sid},
               "parts": [{"type": "text", "text": "port the parser"}]}
    path.write_text(json.dumps(message) + "\n")
    return path


def listed(cfd, *args) -> list[dict]:
    r = cfd.ctl("list", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["sessions"]


def test_list_shows_every_agents_sessions_newest_first_with_their_agent(cfd):
    claude = make_session(cfd, "aaaa1111-claude", "a claude prompt", age_s=4000)
    tree = CodexTree(cfd.home)  # ~/.codex, Codex's default dir
    root, rollout = tree.rollout()
    _child, child_rollout = tree.rollout(parent=root, thread_source="subagent")  # shipped with its root: no row
    age(rollout, 60)
    age(child_rollout, 10)
    transcript, _ = cursor_session(cfd)
    age(transcript, 3000)
    opencode = opencode_session(cfd)
    age(opencode, 2000)

    rows = listed(cfd)
    assert [(r["provider"], r["external_id"]) for r in rows] == [
        ("codex", root), ("opencode", "ses_0123456789abcdefghij"), ("cursor", CURSOR_SID),
        ("claude-code", "aaaa1111-claude")]
    assert [r["transcript_path"] for r in rows] == [str(rollout), str(opencode), str(transcript), str(claude)]
    assert rows[-1]["title"] == "a claude prompt"

    assert [r["external_id"] for r in listed(cfd, "--provider", "codex")] == [root]
    assert [r["provider"] for r in listed(cfd, "--provider", "cursor")] == ["cursor"]
    table = cfd.ctl("list").stdout.splitlines()
    assert table[0].split() == ["ID", "AGENT", "AGE", "LOCAL", "PROJECT", "TITLE"]
    assert table[1].split()[:2] == [root[:8], "codex"]
    none = cfd.ctl("list", "--provider", "codex", "--since", "5s")
    assert none.returncode == 0 and "no Codex sessions found in the last 5s" in none.stdout


def test_save_a_codex_session_by_id_ships_its_rollouts_and_sidecar_as_codex(cfd):
    backend = cfd.backend
    tree = CodexTree(cfd.home)
    root, rollout = tree.rollout()
    child, child_rollout = tree.rollout(parent=root, thread_source="subagent")
    r = cfd.ctl("save", root[:8])
    assert r.returncode == 0, r.stderr
    assert backend.provider(root) == "codex"
    assert backend_has_file(backend, root, rollout) and backend_has_file(backend, root, child_rollout)
    assert backend.file_types(root) == {rollout.name: "transcript", child_rollout.name: "agent"}
    threads = {row["thread_uuid"]: row for row in backend.codex_rollouts()}
    assert set(threads) == {root, child} and threads[child]["parent_thread_uuid"] == root
    again = cfd.ctl("save", str(rollout))  # by path: the same session, nothing sent twice
    assert again.returncode == 0, again.stderr
    assert "0 new line(s) sent" in again.stdout and backend_has_file(backend, root, rollout)


def test_save_a_cursor_session_ships_its_subagents_and_title_as_cursor(cfd):
    backend = cfd.backend
    transcript, subagent = cursor_session(cfd)
    r = cfd.ctl("save", CURSOR_SID)
    assert r.returncode == 0, r.stderr
    assert backend.provider(CURSOR_SID) == "cursor"
    assert backend_has_file(backend, CURSOR_SID, transcript)
    assert backend.file_bytes(CURSOR_SID, "subagents/sub-1.jsonl") == subagent.read_bytes()
    assert backend.file_types(CURSOR_SID) == {transcript.name: "transcript", "subagents/sub-1.jsonl": "agent"}
    assert backend.metadata(CURSOR_SID).get("latest_message_at")  # Cursor's per-chunk fields rode along


def test_save_all_takes_every_agents_sessions(cfd):
    backend = cfd.backend
    claude = make_session(cfd, "cccc3333-claude", "hello")
    tree = CodexTree(cfd.home)
    root, rollout = tree.rollout()
    transcript, _ = cursor_session(cfd)
    r = cfd.ctl("save", "--all")
    assert r.returncode == 0, r.stderr
    assert "saved 3 of 3 sessions" in r.stdout
    assert {backend.provider(i) for i in ("cccc3333-claude", root, CURSOR_SID)} == {"claude-code", "codex", "cursor"}
    assert backend_has_file(backend, "cccc3333-claude", claude)
    assert backend_has_file(backend, root, rollout) and backend_has_file(backend, CURSOR_SID, transcript)


def test_save_an_opencode_session_collects_it_and_its_child_from_the_database_first(cfd, tmp_path):
    """The plugin announced it (messages.jsonl and source.json, as the hook leaves them); save collects
    what the database has since, the child session too, and ships it as opencode."""
    from confabd.providers.opencode.hook import remember_source
    from tests.test_opencode import OpenCodeStore

    backend = cfd.backend
    store = OpenCodeStore(tmp_path / "opencode.db")
    root = store.session("ses_saved_root")
    child = store.session("ses_saved_child", parent=root)
    store.turn(root, "plan the release", "here is a plan")
    store.turn(child, "check the tests", "they pass")
    store.turn(root, "ship it", "shipped")
    messages = cfd.home / ".confab" / "opencode" / root / "messages.jsonl"
    messages.parent.mkdir(parents=True)
    messages.touch()
    remember_source(str(messages), str(store.path))
    assert [(r["provider"], r["external_id"]) for r in listed(cfd)] == [("opencode", root)]
    r = cfd.ctl("save", root)
    assert r.returncode == 0, r.stderr
    assert backend.provider(root) == "opencode"
    assert len(backend.lines(root, "messages.jsonl")) == 4
    assert backend.file_bytes(root, "messages.jsonl") == messages.read_bytes()
    assert len(backend.lines(root, f"opencode/{child}/messages.jsonl")) == 2
    assert backend.metadata(root)["first_user_message"] == "plan the release"
