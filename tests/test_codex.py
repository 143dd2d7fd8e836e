"""Codex without the Codex binary: rollouts and a state DB laid out as codex 0.171.0 does, real
SQLite, real files, the engine over real HTTP to the FakeBackend, and the hook and installer as
confabctl runs them (tests/test_real_codex.py runs the real Codex)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from confabd import providers
from confabd.engine import SessionSync
from confabd.providers.codex import hook, install, rollouts
from confabd.sinks.base import Unavailable
from confabd.sinks.http import HttpSink
from tests.conftest import PYTHON
from tests.fakebackend import FakeBackend
from tests.waiting import wait_until

CODEX = providers.get("codex")


class CodexTree:
    """A CODEX_HOME: rollouts under sessions/YYYY/MM/DD, and state_5.sqlite with threads and edges."""

    def __init__(self, root: Path):
        self.dir = root / ".codex"
        self.day = self.dir / "sessions" / "2026" / "12" / "01"
        self.day.mkdir(parents=True)
        self.db = self.dir / "state_5.sqlite"
        with sqlite3.connect(self.db) as conn:
            conn.executescript("""
                CREATE TABLE threads (id TEXT PRIMARY KEY, rollout_path TEXT NOT NULL, source TEXT NOT NULL,
                    cwd TEXT NOT NULL, model TEXT, thread_source TEXT, agent_path TEXT, agent_role TEXT,
                    agent_nickname TEXT, first_user_message TEXT NOT NULL DEFAULT '');
                CREATE TABLE thread_spawn_edges (parent_thread_id TEXT NOT NULL,
                    child_thread_id TEXT NOT NULL PRIMARY KEY, status TEXT NOT NULL);
                PRAGMA journal_mode=WAL;""")
        conn.close()

    def rollout(self, parent: str = "", thread_source: str = "user", lines: int = 3, source=None,
                register: bool = True) -> tuple[str, Path]:
        thread = str(uuid.uuid4())
        path = self.day / f"rollout-2026-12-01T20-16-45-{thread}.jsonl"
        meta = {"id": thread, "cwd": "/home/u/work", "source": source or ("exec" if not parent else
                {"subagent": {"thread_spawn": {"parent_thread_id": parent}}}), "thread_source": thread_source}
        if parent and thread_source != "user":
            meta.update(agent_nickname="Ada", agent_role="worker")
        body = [{"timestamp": "2026-12-01T20:16:45.000Z", "type": "session_meta", "payload": meta}]
        body += [{"timestamp": "2026-12-01T20:16:46.000Z", "type": "event_msg",
                  "payload": {"type": "agent_message", "message": f"line {i}"}} for i in range(lines)]
        path.write_text("".join(json.dumps(o) + "\n" for o in body))
        if register:
            with sqlite3.connect(self.db) as conn:
                conn.execute("INSERT INTO threads (id, rollout_path, source, cwd, model, thread_source, "
                             "agent_nickname, agent_role) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (thread, str(path), json.dumps(meta["source"]), "/home/u/work", "gpt-fake",
                              thread_source, meta.get("agent_nickname"), meta.get("agent_role")))
                if parent:
                    conn.execute("INSERT INTO thread_spawn_edges VALUES (?, ?, 'open')", (parent, thread))
            conn.close()
        return thread, path

    def env(self) -> dict:
        return {"CODEX_HOME": str(self.dir)}


@pytest.fixture
def tree(tmp_path):
    return CodexTree(tmp_path)


@pytest.fixture
def backend():
    with FakeBackend() as server:
        yield server


def engine(backend, thread: str, path: Path) -> SessionSync:
    return SessionSync(thread, str(path), HttpSink(backend.url, backend.api_key, timeout=10), provider=CODEX)


def payload(thread: str, path: Path, **extra) -> dict:
    return {"session_id": thread, "transcript_path": str(path), "cwd": "/home/u/work",
            "hook_event_name": "SessionStart", "source": "startup", **extra}


# -- the hook: which session a SessionStart announces ------------------------------------


def test_a_subagents_start_walks_up_to_its_root(tree):
    root, root_path = tree.rollout()
    child, _ = tree.rollout(parent=root, thread_source="subagent")
    grandchild, grandchild_path = tree.rollout(parent=child, thread_source="subagent")
    assert hook.announce(payload(grandchild, grandchild_path), env=tree.env()) == (root, str(root_path), "/home/u/work")
    assert hook.announce(payload(root, root_path), env=tree.env()) == (root, str(root_path), "/home/u/work")


def test_a_cycle_in_the_edges_ships_the_firing_session_if_it_is_a_users(tree):
    a, a_path = tree.rollout()
    b, _ = tree.rollout(parent=a)
    with sqlite3.connect(tree.db) as conn:
        conn.execute("INSERT INTO thread_spawn_edges VALUES (?, ?, 'open')", (b, a))
    conn.close()
    assert hook.announce(payload(a, a_path), env=tree.env())[0] == a


def test_without_a_state_db_the_firing_session_is_its_own_root(tree):
    thread, path = tree.rollout()
    tree.db.unlink()
    assert hook.announce(payload(thread, path), env=tree.env())[0] == thread


def test_a_rollout_that_is_not_a_users_session_is_not_shipped_on_its_own(tree):
    thread, path = tree.rollout(thread_source="memory_consolidation")
    with pytest.raises(hook.Skip, match="memory_consolidation"):
        hook.announce(payload(thread, path), env=tree.env())


def test_codex_home_moves_the_sessions_dir_and_other_paths_are_refused(tree, tmp_path):
    thread, path = tree.rollout()
    assert hook.announce(payload(thread, path), env=tree.env())[0] == thread  # CODEX_HOME honoured
    with pytest.raises(rollouts.BadRollout, match="not under the Codex sessions directory"):
        hook.announce(payload(thread, path), env={}, home=str(tmp_path / "elsewhere"))
    for bad, why in ((str(tree.day / "notes.jsonl"), "not a Codex rollout"),
                     ("rollout-x-" + thread + ".jsonl", "not an absolute path"),
                     (str(tree.day / ".." / path.name), "not an absolute path"), (None, "no transcript_path")):
        with pytest.raises(rollouts.BadRollout, match=why):
            hook.announce(payload(thread, path, transcript_path=bad, session_id="nope"), env=tree.env())
    # a null transcript_path (Codex's schema allows it) is looked up in the state DB
    assert hook.announce(payload(thread, path, transcript_path=None), env=tree.env())[0] == thread


def test_the_hook_command_registers_the_root_with_the_master(cfd, tree):
    """`confabctl hook session-start --provider codex` through a real master: the root, provider codex,
    Codex's own response on stdout; session-end is refused (Codex has none) and still exits 0."""
    cfd.master()
    root, root_path = tree.rollout()
    child, child_path = tree.rollout(parent=root, thread_source="subagent")
    env = dict(cfd.env, **tree.env())
    r = cfd.ctl("hook", "session-start", "--provider", "codex", input=json.dumps(payload(child, child_path)), env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, '{"continue": true}\n', "")
    session = cfd.session(root)
    assert session["provider"] == "codex" and session["transcript_path"] == str(root_path)
    table = cfd.ctl("status").stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("SESSION"))
    assert table[header].split()[:2] == ["SESSION", "AGENT"] and table[header + 1].split()[1] == "codex"  # beside another agent only
    cfd.backend.wait_for(lambda: cfd.backend.file_bytes(root, child_path.name) == child_path.read_bytes())
    assert cfd.backend.file_types(root) == {root_path.name: "transcript", child_path.name: "agent"}
    r = cfd.ctl("hook", "session-end", "--provider", "codex", input=json.dumps(payload(root, root_path)), env=env)
    assert r.returncode == 0 and "not used for codex" in r.stderr
    assert cfd.session(root)["state"] == "syncing"  # nothing ended it
    r = cfd.ctl("stop", root, "--wait")
    assert r.returncode == 0, r.stderr
    assert cfd.backend.events(root) == []  # a Codex session never posts session_end


# -- the engine: files, names, sidecars --------------------------------------------------


def test_descendants_are_agent_files_at_the_dbs_paths_with_their_sidecars(backend, tree):
    root, root_path = tree.rollout()
    child, child_path = tree.rollout(parent=root, thread_source="subagent")
    grandchild, grandchild_path = tree.rollout(parent=child, thread_source="subagent")
    e = engine(backend, root, root_path)
    e.sync_until_idle()
    for path in (root_path, child_path, grandchild_path):
        assert backend.file_bytes(root, path.name) == path.read_bytes()
    assert backend.file_types(root) == {root_path.name: "transcript", child_path.name: "agent",
                                        grandchild_path.name: "agent"}
    assert backend.provider(root) == "codex"
    rows = {r["thread_uuid"]: r for r in backend.codex_rollouts()}
    assert set(rows) == {root, child, grandchild}
    assert "parent_thread_uuid" not in rows[root] and rows[root]["source"] == "exec"
    assert rows[child]["parent_thread_uuid"] == root and rows[grandchild]["parent_thread_uuid"] == child
    assert rows[child]["source"] == "subagent" and rows[child]["agent_nickname"] == "Ada"
    assert rows[child]["rollout_path"] == str(child_path) and rows[child]["hosted_file_name"] == child_path.name
    # later chunks carry no sidecar; a child that appears later is picked up
    with root_path.open("a") as fh:
        fh.write(json.dumps({"type": "event_msg", "payload": {"type": "agent_message", "message": "more"}}) + "\n")
    late, late_path = tree.rollout(parent=root, thread_source="subagent")
    e.sync_until_idle()
    assert backend.sidecar_chunks() == 4 and late in {r["thread_uuid"] for r in backend.codex_rollouts()}
    assert backend.file_bytes(root, root_path.name) == root_path.read_bytes()


def test_after_a_restart_a_descendant_is_found_at_its_own_path(backend, tree):
    """The Go client's restart bug (providers.md §3.7): init names the child's rollout, which it then
    looked for beside the root and never found. Here a new engine finds it through the DB."""
    root, root_path = tree.rollout()
    child, child_path = tree.rollout(parent=root, thread_source="subagent")
    engine(backend, root, root_path).sync_until_idle()
    with child_path.open("a") as fh:
        fh.write(json.dumps({"type": "event_msg", "payload": {"type": "agent_message", "message": "new"}}) + "\n")
    engine(backend, root, root_path).sync_until_idle()
    assert backend.file_bytes(root, child_path.name) == child_path.read_bytes()
    # found from init's name, so its position was the backend's from the start: nothing was refused
    assert [r["error"] for r in backend.requests_log() if r["status"] >= 400] == []


def test_a_failed_sidecar_rides_on_the_next_chunk(backend, tree):
    """The server commits a chunk before it records codex_rollout: its 500 must not lose the row
    (the Go client sent it only with first_line 1, so never again)."""
    root, root_path = tree.rollout()
    e = engine(backend, root, root_path)
    backend.fail_codex_rollout_next(1)
    with pytest.raises(Unavailable):
        e.sync()
    assert backend.codex_rollouts() == [] and len(backend.lines(root, root_path.name)) == 4  # committed
    e.sync_until_idle()
    assert backend.codex_rollouts() == []  # no new line yet: nothing to carry it
    with root_path.open("a") as fh:
        fh.write(json.dumps({"type": "event_msg", "payload": {"type": "agent_message", "message": "x"}}) + "\n")
    e.sync_until_idle()
    [row] = backend.codex_rollouts()
    assert row["thread_uuid"] == root
    assert e.progress()[root_path.name].sidecar_sent  # kept in State: a restart does not send it again


def test_links_and_foreign_rollouts_named_by_the_db_are_not_read(backend, tree, tmp_path):
    root, root_path = tree.rollout()
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    link_thread, link = tree.rollout(parent=root, thread_source="subagent")
    link.unlink()
    link.symlink_to(secret)
    user_thread, user_path = tree.rollout(parent=root, thread_source="user")  # another session, not an agent
    e = engine(backend, root, root_path)
    e.sync_until_idle()
    assert set(backend.files(root)) == {root_path.name}


def test_a_compressed_subagent_rollout_is_shipped_decompressed_under_its_plain_name(backend, tree, tmp_path,
                                                                                    monkeypatch):
    import zstandard

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root, root_path = tree.rollout()
    child, child_path = tree.rollout(parent=root, thread_source="subagent")
    plain = child_path.read_bytes()
    compressed = child_path.with_name(child_path.name + ".zst")
    compressed.write_bytes(zstandard.ZstdCompressor().compress(plain))
    child_path.unlink()
    with sqlite3.connect(tree.db) as conn:
        conn.execute("UPDATE threads SET rollout_path = ? WHERE id = ?", (str(compressed), child))
    conn.close()
    engine(backend, root, root_path).sync_until_idle()
    assert backend.file_bytes(root, child_path.name) == plain and set(backend.files(root)) == {
        root_path.name, child_path.name}
    copy = tmp_path / "home" / ".confab" / "codex" / root / child_path.name
    assert copy.read_bytes() == plain and oct(copy.stat().st_mode & 0o777) == "0o600"
    [row] = [r for r in backend.codex_rollouts() if r["thread_uuid"] == child]
    assert row["rollout_path"] == str(compressed)  # where Codex keeps it
    # a resumed subagent gets a plain rollout again (Codex prefers it): read from there, same backend file
    child_path.write_bytes(plain + b'{"type":"event_msg","payload":{"type":"agent_message","message":"more"}}\n')
    engine(backend, root, root_path).sync_until_idle()
    assert backend.file_bytes(root, child_path.name) == child_path.read_bytes()


def test_a_compressed_root_without_a_plain_rollout_is_not_followed(tree):
    thread, path = tree.rollout()
    compressed = path.with_name(path.name + ".zst")
    path.rename(compressed)
    with pytest.raises(hook.Skip, match="compressed"):
        hook.announce(payload(thread, compressed), env=tree.env())
    path.write_text(compressed.read_text())  # not really compressed: only the plain one is read
    assert hook.announce(payload(thread, compressed), env=tree.env())[1] == str(path)


def test_the_title_of_a_codex_exec_session_comes_from_its_user_message_item(backend, tree):
    """codex 0.171 `exec` writes no event_msg/user_message: the item_completed UserMessage names the prompt."""
    root, root_path = tree.rollout(lines=0)
    lines = [
        {"type": "response_item", "payload": {"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": "<environment_context>x"}]}},
        {"type": "response_item", "payload": {"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": "fix the <b>bug</b>"}]}},
        {"type": "event_msg", "payload": {"type": "item_completed", "item": {
            "type": "UserMessage", "content": [{"type": "text", "text": "fix the bug please"}]}}},
    ]
    with root_path.open("a") as fh:
        fh.writelines(json.dumps(o) + "\n" for o in lines)
    engine(backend, root, root_path).sync_until_idle()
    assert backend.metadata(root)["first_user_message"] == "fix the bug please"


# -- install-hooks --provider codex --------------------------------------------------------


def test_the_trust_hash_is_the_one_codex_checks():
    """The algorithm verified against codex 0.171.0 (providers.md §3.6 and its appendix)."""
    import hashlib

    command = "/usr/bin/confab hook session-start --provider codex"
    ident = ('{"event_name":"session_start","hooks":[{"async":false,"command":"' + command +
             '","statusMessage":"Starting Confab sync","timeout":600,"type":"command"}],'
             '"matcher":"startup|resume|clear"}')
    assert install.trusted_hash(command, matcher="startup|resume|clear", status_message="Starting Confab sync") == \
        "sha256:" + hashlib.sha256(ident.encode()).hexdigest()


def test_install_keeps_the_users_settings_is_idempotent_and_uninstalls(cfd, tree):
    config = tree.dir / "config.toml"
    mine = ('model = "o3"  # mine\n[features]\nhooks = false\nweb_search = true\n\n'
            '[[hooks.SessionStart]]\nmatcher = "*"\n[[hooks.SessionStart.hooks]]\ntype = "command"\n'
            'command = "echo mine"\n')
    config.write_text(mine + "\n# >>> confab codex hooks >>>\n[[hooks.SessionStart]]\nmatcher = \"x\"\n"
                      "# <<< confab codex hooks <<<\n")  # the Go client's block: replaced
    env = dict(cfd.env, **tree.env())
    r = cfd.ctl("install-hooks", "--provider", "codex", env=env)
    assert r.returncode == 0, r.stderr
    text = config.read_text()
    assert "confab codex hooks" not in text and text.count("# >>> confabd codex hooks >>>") == 1
    assert 'model = "o3"  # mine' in text and "web_search = true" in text and 'command = "echo mine"' in text
    assert "hooks = true" in text and "hooks = false" not in text
    assert f'[hooks.state."{config}:session_start:1:0"]' in text  # after the user's own group 0
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    again = cfd.ctl("install-hooks", "--provider", "codex", env=env)
    assert again.returncode == 0 and "already" in again.stdout and config.read_text() == text
    r = cfd.ctl("uninstall-hooks", "--provider", "codex", env=env)
    assert r.returncode == 0, r.stderr
    assert config.read_text() == mine.replace("hooks = false", "hooks = true")
    assert not (cfd.home / ".claude" / "settings.json").exists()  # Claude Code's settings untouched


def test_the_provider_names(tree):
    assert providers.get().name == "claude-code" and providers.get("codex") is CODEX
    assert providers.NAMES == ("claude-code", "codex", "cursor", "opencode")  # the server's four
    for name, why in (("Codex", "unknown provider"), ("", "unknown provider"), ("vim", "unknown provider")):
        with pytest.raises(providers.UnknownProvider, match=why):
            providers.get(name)


def test_a_state_naming_an_unknown_provider_is_not_adopted_and_kept(cfd, tree):
    """A State from a newer confabd (or a corrupt one) names an agent this one does not know: the
    master says so and leaves it on disk, instead of starting a worker that crashes on it."""
    root, root_path = tree.rollout()
    good, good_path = tree.rollout()
    cfd.sync_dir.mkdir(parents=True)
    for eid, path, provider in ((root, root_path, "windsurf"), (good, good_path, "codex")):
        cfd.state_file(eid).write_text(json.dumps({"external_id": eid, "transcript_path": str(path),
                                                   "provider": provider, "finishing": True}))
    master = cfd.master()
    cfd.backend.wait_for(lambda: cfd.backend.file_bytes(good, good_path.name) == good_path.read_bytes())
    assert cfd.backend.provider(good) == "codex"  # adopted as the agent its State names
    wait_until(lambda: "unknown provider 'windsurf'" in master.log_text(), 10, what="the refusal in the log")
    assert cfd.session(root) is None and cfd.state_file(root).exists()
    assert cfd.backend.session_id(root) is None
