"""OpenCode without the binary: a database with opencode 1.18's tables (real SQLite, WAL), the
collector, and the plugin's payloads through the real master from a stand-in `opencode` parent
(tests/test_real_opencode.py runs the real OpenCode)."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from confabd.providers.opencode.collector import Collector
from confabd.providers.opencode.db import OpenCodeDB
from tests.conftest import PYTHON
from tests.waiting import wait_until

_ids = itertools.count(1)


class OpenCodeStore:
    """opencode.db with the columns confabd reads, written as OpenCode writes it (row by row)."""

    def __init__(self, path: Path):
        self.path = path
        with sqlite3.connect(path) as conn:
            conn.executescript("""
                PRAGMA journal_mode=WAL;
                CREATE TABLE session (id TEXT PRIMARY KEY, parent_id TEXT, directory TEXT NOT NULL);
                CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, time_created INTEGER NOT NULL,
                                      time_updated INTEGER NOT NULL, data TEXT NOT NULL);
                CREATE TABLE part (id TEXT PRIMARY KEY, message_id TEXT NOT NULL, session_id TEXT NOT NULL,
                                   time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL, data TEXT NOT NULL);""")
        conn.close()

    def _exec(self, sql: str, args: tuple) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute(sql, args)
        conn.close()

    def session(self, sid: str, parent: str = "", directory: str = "/home/u/work") -> str:
        self._exec("INSERT INTO session VALUES (?, ?, ?)", (sid, parent or None, directory))
        return sid

    def message(self, sid: str, role: str, **data) -> str:
        n = next(_ids)
        mid = f"msg_{n:012d}"
        self._exec("INSERT INTO message VALUES (?, ?, ?, ?, ?)",
                   (mid, sid, 1796156284931 + n, 1796156284931 + n, json.dumps({"role": role, **data})))
        return mid

    def update(self, mid: str, **data) -> None:
        with sqlite3.connect(self.path) as conn:
            old = json.loads(conn.execute("SELECT data FROM message WHERE id = ?", (mid,)).fetchone()[0])
            conn.execute("UPDATE message SET data = ? WHERE id = ?", (json.dumps({**old, **data}), mid))
        conn.close()

    def part(self, sid: str, mid: str, **data) -> str:
        pid = f"prt_{next(_ids):012d}"
        self._exec("INSERT INTO part VALUES (?, ?, ?, 0, 0, ?)", (pid, mid, sid, json.dumps(data)))
        return pid

    def turn(self, sid: str, prompt: str, answer: str) -> None:
        user = self.message(sid, "user")
        self.part(sid, user, type="text", text=prompt)
        reply = self.message(sid, "assistant", finish="stop")
        self.part(sid, reply, type="text", text=answer)


@pytest.fixture
def store(tmp_path):
    return OpenCodeStore(tmp_path / "opencode.db")


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the collector ----------------------------------------------------------------------


def test_complete_messages_only_in_order_with_their_ids_and_no_unfinished_tools(store, tmp_path):
    out = tmp_path / "out" / "messages.jsonl"
    sid = store.session("ses_a")
    c = Collector(OpenCodeDB(str(store.path)), sid, str(out))
    user = store.message(sid, "user")
    assert c.reconcile() == 0 and not out.exists()  # the prompt's row without its text: not yet
    store.part(sid, user, type="text", text="fix the <b>bug</b>")
    reply = store.message(sid, "assistant")  # streaming: no finish yet
    store.part(sid, reply, type="tool", state={"status": "running"})
    assert c.reconcile() == 1
    [line] = lines_of(out)
    assert line["info"] == {"role": "user", "id": user, "sessionID": sid}
    assert line["parts"][0]["messageID"] == user and line["parts"][0]["sessionID"] == sid
    store.part(sid, reply, type="tool", state={"status": "completed"})
    store.update(reply, finish="tool-calls")
    store.turn(sid, "again", "done")
    assert c.reconcile() == 3
    written = lines_of(out)
    assert [l["info"]["id"] for l in written][:2] == [user, reply]
    assert [p["state"]["status"] for p in written[1]["parts"]] == ["completed"]  # the running one dropped
    assert c.reconcile() == 0
    # a new collector (a restart) seeds from the file: nothing is written twice
    store.turn(sid, "third", "ok")
    assert Collector(OpenCodeDB(str(store.path)), sid, str(out)).reconcile() == 2
    ids = [l["info"]["id"] for l in lines_of(out)]
    assert len(ids) == len(set(ids)) == 6


def test_a_prompt_without_text_is_written_once_a_later_message_exists(store, tmp_path):
    """The Go client wrote a user message as soon as its row existed: a poll between the row and its
    text part saved the prompt empty for good (providers.md §4.8)."""
    out = tmp_path / "messages.jsonl"
    sid = store.session("ses_b")
    c = Collector(OpenCodeDB(str(store.path)), sid, str(out))
    user = store.message(sid, "user")
    assert c.reconcile() == 0
    store.part(sid, user, type="file", url="file:///x.png")  # an image-only prompt: no text ever
    store.message(sid, "assistant", finish="stop")
    assert c.reconcile() == 2 and lines_of(out)[0]["parts"][0]["type"] == "file"


def test_no_database_is_nothing_yet(tmp_path):
    c = Collector(OpenCodeDB(str(tmp_path / "missing.db")), "ses_x", str(tmp_path / "m.jsonl"))
    assert c.reconcile() == 0 and not (tmp_path / "m.jsonl").exists()


# -- through the real master ---------------------------------------------------------------

PLUGIN = """\
import json, subprocess, sys
for line in sys.stdin:
    event, path = line.strip().rsplit(" ", 1)
    r = subprocess.run(["/bin/sh", "-c", f"{HOOK} hook {event} --provider opencode < {path}"],
                       capture_output=True, text=True)
    print(json.dumps([r.returncode, r.stdout, r.stderr]), flush=True)
"""


class FakeOpenCode:
    """A process named opencode that runs the plugin's shell-outs as its children."""

    def __init__(self, cfd):
        self.cfd = cfd
        script = cfd.root / "bin" / "opencode"
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"HOOK = {PYTHON + ' -m confabd.ctl'!r}\n" + PLUGIN)
        self.proc = subprocess.Popen([PYTHON, str(script)], env=cfd.env, cwd=cfd.root, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def hook(self, event: str, payload: dict):
        path = self.cfd.root / f"opencode-{event}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(payload))
        self.proc.stdin.write(f"{event} {path}\n")
        self.proc.stdin.flush()
        return tuple(json.loads(self.proc.stdout.readline()))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_an_opencode_session_and_its_child_are_shipped_once(cfd, store):
    backend = cfd.backend
    cfd.env["CONFAB_OPENCODE_DB"] = str(store.path)
    cfd.master()
    agent = FakeOpenCode(cfd)
    try:
        root = store.session("ses_root")
        code, out, err = agent.hook("session-start", {"session_id": root, "cwd": "/home/u/work",
                                                      "parent_pid": agent.pid})
        assert (code, out, err) == (0, "", "")
        session = cfd.session(root)
        assert session["provider"] == "opencode" and session["parent_pid"] == agent.pid
        messages = cfd.home / ".confab" / "opencode" / root / "messages.jsonl"
        assert session["transcript_path"] == str(messages)
        assert backend.session_id(root) is None  # nothing complete yet: no empty session at the backend
        store.turn(root, "plan the release", "here is a plan")
        backend.wait_for(lambda: backend.file_bytes(root, "messages.jsonl") == messages.read_bytes()
                         and len(backend.lines(root, "messages.jsonl")) == 2, timeout=30)
        # a subagent's session: its start is not a session of its own; the root ships it
        child = store.session("ses_child", parent=root)
        assert agent.hook("session-start", {"session_id": child, "cwd": "/home/u/work", "parent_pid": agent.pid,
                                            "parent_id": root})[2].count("shipped with its root") == 1
        assert agent.hook("session-start", {"session_id": child, "cwd": ""})[2].count("child of") == 1  # from the DB
        store.turn(child, "check the tests", "they pass")
        store.session("../../escape", parent=root)  # an id that is no file name: never a path
        store.turn("../../escape", "x", "y")
        child_file = cfd.home / ".confab" / "opencode" / root / "children" / child / "messages.jsonl"
        name = f"opencode/{child}/messages.jsonl"
        backend.wait_for(lambda: backend.file_bytes(root, name) == child_file.read_bytes()
                         and len(backend.lines(root, name)) == 2, timeout=30)
        assert backend.file_types(root) == {"messages.jsonl": "transcript", name: "agent"}
        assert not (cfd.home / ".confab" / "opencode" / "escape").exists()  # children/../../escape
        assert backend.metadata(root)["first_user_message"] == "plan the release"
        store.turn(root, "ship it", "shipped")
        assert agent.hook("session-end", {"session_id": root})[0] == 0  # the plugin's dispose
        wait_until(lambda: cfd.session(root) is None, 30, what="the session to finish")
        assert len(backend.lines(root, "messages.jsonl")) == 4  # the final collect caught the last turn
        assert backend.lines(root, "messages.jsonl") == messages.read_text().splitlines()
        assert backend.events(root) == []  # OpenCode has no end to report
    finally:
        agent.close()


def test_the_plugin_is_installed_with_this_confabctl_and_replaces_the_go_clients(cfd, tmp_path):
    config = tmp_path / "xdg"
    plugins = config / "opencode" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "confab-sync.ts").write_text("// Go client\nawait $`echo x | confab hook session-start --provider opencode`\n")
    (plugins / "mine.ts").write_text("// mine\n")
    env = dict(cfd.env, XDG_CONFIG_HOME=str(config))
    r = cfd.ctl("install-hooks", "--provider", "opencode", env=env)
    assert r.returncode == 0, r.stderr
    source = (plugins / "confabd-sync.ts").read_text()
    assert json.dumps([PYTHON, "-I", "-m", "confabd.ctl"]) in source and "__CONFABCTL__" not in source
    assert not (plugins / "confab-sync.ts").exists() and (plugins / "mine.ts").exists()
    again = cfd.ctl("install-hooks", "--provider", "opencode", env=env)
    assert again.returncode == 0 and "already" in again.stdout
    assert cfd.ctl("uninstall-hooks", "--provider", "opencode", env=env).returncode == 0
    assert sorted(p.name for p in plugins.iterdir()) == ["mine.ts"]


def test_a_session_ended_before_its_first_collect_is_still_collected_and_shipped(cfd, store):
    """A State left finishing (the master died as OpenCode ended it): the next master's worker starts
    finishing at once, before any wait for messages.jsonl, and must collect it first, not take the
    missing file for "nothing to sync" (it did: the session's messages were never shipped)."""
    sid = store.session("ses_quick")
    store.turn(sid, "one question", "one answer")
    messages = cfd.home / ".confab" / "opencode" / sid / "messages.jsonl"
    messages.parent.mkdir(parents=True)
    (messages.parent / "source.json").write_text(json.dumps({"db": str(store.path)}))
    cfd.sync_dir.mkdir(parents=True)
    cfd.state_file(sid).write_text(json.dumps({"external_id": sid, "transcript_path": str(messages),
                                               "provider": "opencode", "finishing": True}))
    cfd.master()
    cfd.backend.wait_for(lambda: len(cfd.backend.lines(sid, "messages.jsonl")) == 2, timeout=30)
    wait_until(lambda: not cfd.state_file(sid).exists(), 30, what="the session to finish")


def test_child_sessions_wait_for_the_servers_opencode_subagents_capability(cfd, store):
    """The server says `opencode_subagents`; the Go client asks `opencode_subagent_files` (no server sends it)
    and so never uploads children. A backend without the server's key gets the root's lines and no child:
    the root still flows and finishes; the capability is the one the server sends, not the Go client's."""
    backend = cfd.backend
    backend.capabilities = {"workflow_files": True, "workflow_journal": True, "opencode_subagent_files": True}
    cfd.env["CONFAB_OPENCODE_DB"] = str(store.path)
    master = cfd.master()
    agent = FakeOpenCode(cfd)
    try:
        root = store.session("ses_root")
        assert agent.hook("session-start", {"session_id": root, "cwd": "/home/u/work", "parent_pid": agent.pid})[0] == 0
        store.turn(root, "plan the release", "here is a plan")
        backend.wait_for(lambda: len(backend.lines(root, "messages.jsonl")) == 2, timeout=30)
        child = store.session("ses_child", parent=root)
        store.turn(child, "check the tests", "they pass")
        child_file = cfd.home / ".confab" / "opencode" / root / "children" / child / "messages.jsonl"
        wait_until(lambda: child_file.exists() and len(child_file.read_text().splitlines()) == 2, 30,
                   what="the child's messages collected")
        store.turn(root, "ship it", "shipped")
        assert agent.hook("session-end", {"session_id": root})[0] == 0
        wait_until(lambda: cfd.session(root) is None, 30, what="the session to finish")
        assert backend.file_types(root) == {"messages.jsonl": "transcript"}  # no child without the capability
        assert len(backend.lines(root, "messages.jsonl")) == 4
        assert "'opencode_subagents'" in master.log_text()
    finally:
        agent.close()


def test_a_start_announced_after_opencode_exited_is_finished_not_kept_forever(cfd, store):
    """OpenCode's plugin can announce a session after OpenCode itself has exited (a late session.created or
    reconcile event). No OpenCode process is among the hook's ancestors and the pid it names is gone:
    nothing would ever end that session, so the master finishes it at once, after its final sync."""
    backend = cfd.backend
    cfd.env["CONFAB_OPENCODE_DB"] = str(store.path)
    cfd.master()
    root = store.session("ses_late")
    store.turn(root, "plan the release", "here is a plan")
    gone = subprocess.Popen([PYTHON, "-c", "pass"])
    gone.wait()
    r = cfd.ctl("hook", "session-start", "--provider", "opencode",
                input=json.dumps({"session_id": root, "cwd": "/home/u/work", "parent_pid": gone.pid}))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: cfd.session(root) is None, 30, what="the session of a gone OpenCode to finish")
    messages = cfd.home / ".confab" / "opencode" / root / "messages.jsonl"
    assert backend.lines(root, "messages.jsonl") == messages.read_text().splitlines()
    assert len(backend.lines(root, "messages.jsonl")) == 2


def test_a_database_path_with_uri_characters_is_still_read(tmp_path):
    """Agents' databases are opened read-only through an SQLite URI; a '?' or '#' in the path (a user's
    directory name) must not end the file name inside that URI."""
    from confabd.providers import readonly_db

    path = tmp_path / "odd?dir#x" / "opencode.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (v)")
        conn.execute("INSERT INTO t VALUES (7)")
    conn.close()
    assert readonly_db.query(str(path), "SELECT v FROM t", (), 1.0) == [(7,)]
    assert readonly_db.query(str(tmp_path / "missing.db"), "SELECT 1", (), 1.0) is None
