"""End to end with the real Codex CLI (npm @openai/codex, pinned in tests/codex.py).

Codex talks to a fake Responses API on 127.0.0.1; its SessionStart hook is installed in its
config.toml by the real `confabctl install-hooks --provider codex` (with the trust hash Codex
checks: a wrong one makes it skip the hook silently); a real master ships to the FakeBackend.
The first run installs Codex with npm (424 MB; skipped when npm cannot reach the registry,
a failure under CI=true); later runs reuse tests/.cache/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.codex import FakeResponses, codex_env, codex_home, install
from tests.conftest import PYTHON
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def codex_bin() -> Path:
    return install()


@pytest.fixture
def api():
    with FakeResponses() as fake:
        yield fake


class RealCodex:
    def __init__(self, cfd, api: FakeResponses, binary: Path):
        self.cfd, self.binary = cfd, binary
        self.directory = codex_home(cfd.home, api.url)
        self.env = codex_env(cfd.env, cfd.home, self.directory)
        self.project = cfd.root / "work"
        self.project.mkdir()
        self.procs: list[subprocess.Popen] = []

    def install_hooks(self) -> None:
        r = self.cfd.ctl("install-hooks", "--provider", "codex", env=self.env)
        assert r.returncode == 0, r.stderr
        config = (self.directory / "config.toml").read_text()
        assert "# the user's own settings, kept by install-hooks" in config and "hooks = true" in config
        assert "hook session-start --provider codex" in config and "trusted_hash" in config

    def exec(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        proc = subprocess.Popen([str(self.binary), "exec", "--skip-git-repo-check", "--sandbox", "read-only", *args],
                                cwd=self.project, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.procs.append(proc)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([str(self.binary), "exec", "--skip-git-repo-check", "--sandbox", "read-only", *args],
                                cwd=self.project, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def rollouts(self) -> list[Path]:
        return sorted((self.directory / "sessions").rglob("rollout-*.jsonl"))

    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(10)


@pytest.fixture
def codex(cfd, api, codex_bin):
    real = RealCodex(cfd, api, codex_bin)
    real.install_hooks()
    yield real
    real.close()


def session_id_of(rollout: Path) -> str:
    return rollout.name[-len("xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.jsonl"):-len(".jsonl")]


def wait_shipped(cfd, eid: str, rollout: Path, timeout: float = 30.0) -> None:
    """The session finished (its codex exited) with the whole rollout at the backend."""
    cfd.backend.wait_for(lambda: cfd.backend.file_bytes(eid, rollout.name) == rollout.read_bytes(), timeout=timeout)
    wait_until(lambda: cfd.session(eid) is None, timeout, what="the session to finish after codex exited")
    wait_until(lambda: not cfd.state_file(eid).exists(), timeout, what="its State to be removed")


def test_codex_exec_ships_every_rollout_line_once(cfd, codex, api):
    """`codex exec`: the hook registers the rollout, the master ships it, codex's exit ends it."""
    backend = cfd.backend
    cfd.master()
    r = codex.exec("say hello")
    assert r.returncode == 0 and "hello from fake" in r.stdout, r.stderr[-2000:]
    assert api.requests("/responses"), "codex never asked the fake model"
    [rollout] = codex.rollouts()
    eid = session_id_of(rollout)
    wait_shipped(cfd, eid, rollout)

    data = rollout.read_bytes()
    assert backend.lines(eid, rollout.name) == data.decode().splitlines()  # every line, once, in order
    assert backend.file_types(eid) == {rollout.name: "transcript"}
    assert backend.provider(eid) == "codex"
    assert backend.events(eid) == []  # Codex has no end hook: no session_end is made up
    meta = backend.metadata(eid)
    assert meta["first_user_message"] == "say hello"  # codex exec writes no user_message line
    assert meta["cwd"] == str(codex.project)
    [sidecar] = backend.codex_rollouts()
    assert sidecar["thread_uuid"] == eid and sidecar["rollout_path"] == str(rollout)
    assert "parent_thread_uuid" not in sidecar and sidecar["source"] == "exec"

    # resumed: the same rollout grows; only the new lines are sent
    before = backend.chunk_counts(eid)[rollout.name]
    r = codex.exec("resume", eid, "again")
    assert r.returncode == 0, r.stderr[-2000:]
    assert codex.rollouts() == [rollout] and rollout.read_bytes() != data
    wait_shipped(cfd, eid, rollout)
    assert backend.lines(eid, rollout.name) == rollout.read_text().splitlines()
    assert backend.chunk_counts(eid)[rollout.name] > before
    # one row; the sidecar rode on the first chunk of each worker's run (the resumed session's worker
    # cannot know whether the finished one's sidecar was recorded: the upsert is idempotent)
    assert len(backend.codex_rollouts()) == 1 and backend.sidecar_chunks() == 2


def test_a_master_killed_mid_session_is_replaced_and_codex_killed_ends_the_session(cfd, codex, api):
    """kill -9 of the master while Codex waits for its model: the next master adopts the session as
    a Codex one (State keeps the provider) and watches the same codex; kill -9 of codex then ends it,
    with every line written so far shipped once."""
    backend = cfd.backend
    first = cfd.master()
    api.released.clear()
    proc = codex.start("a long task")
    wait_until(lambda: codex.rollouts() and cfd.session(session_id_of(codex.rollouts()[0])), 60,
               what="codex to start its session")
    [rollout] = codex.rollouts()
    eid = session_id_of(rollout)
    wait_until(lambda: api.requests("/responses"), 60, what="codex to ask its model")
    backend.wait_for(lambda: backend.file_bytes(eid, rollout.name) == rollout.read_bytes(), timeout=30)
    parent = cfd.session(eid)["parent_pid"]
    assert psutil.Process(parent).name() == "codex"  # the Rust binary, child of the node wrapper
    first.kill9()
    cfd.master()
    adopted = cfd.session(eid)
    assert adopted["provider"] == "codex" and adopted["parent_pid"] == parent
    os.kill(parent, signal.SIGKILL)
    wait_shipped(cfd, eid, rollout)
    assert backend.lines(eid, rollout.name) == rollout.read_text().splitlines()
    assert backend.events(eid) == [] and len(backend.codex_rollouts()) == 1


def test_a_fork_is_shipped_as_its_own_session(cfd, codex, api):
    """`codex exec fork` fires SessionStart with source "fork", which the Go client's matcher
    (startup|resume|clear) does not match: ours does, and the fork's new rollout is its own session."""
    backend = cfd.backend
    cfd.master()
    assert codex.exec("say hello").returncode == 0
    [origin] = codex.rollouts()
    wait_shipped(cfd, session_id_of(origin), origin)
    r = codex.exec("fork", session_id_of(origin), "and now?")
    assert r.returncode == 0, r.stderr[-2000:]
    [fork] = [p for p in codex.rollouts() if p != origin]
    fork_id = session_id_of(fork)
    wait_shipped(cfd, fork_id, fork)
    assert backend.lines(fork_id, fork.name) == fork.read_text().splitlines()
    assert backend.session_id(fork_id) != backend.session_id(session_id_of(origin))
    assert backend.lines(session_id_of(origin), origin.name) == origin.read_text().splitlines()  # untouched


def test_claude_code_codex_cursor_and_opencode_sessions_through_one_master(cfd, codex, api, tmp_path):
    """The four agents' sessions at once, one master: Claude Code (stand-in), the real Codex, Cursor
    (recorded shapes), OpenCode with a child session (a database as OpenCode writes it): each under its
    own provider, every line once."""
    import shutil

    from confabd.providers.cursor import paths as cursor_paths
    from tests.conftest import fixture_lines
    from tests.data import CURSOR
    from tests.test_cursor import SID as CURSOR_ID, FakeCursor, start_payload
    from tests.test_opencode import FakeOpenCode, OpenCodeStore

    backend = cfd.backend
    cfd.env["CONFAB_CURSOR_DIR"] = str(cfd.home / ".cursor")
    store = OpenCodeStore(tmp_path / "opencode.db")
    cfd.env["CONFAB_OPENCODE_DB"] = str(store.path)
    cfd.master()
    claude, cursor, opencode = cfd.claude(), FakeCursor(cfd), FakeOpenCode(cfd)
    try:
        oc_root, oc_child = store.session("ses_root"), store.session("ses_kid", parent="ses_root")
        store.turn(oc_root, "plan", "a plan")
        store.turn(oc_child, "look", "looked")
        assert opencode.hook("session-start", {"session_id": oc_root, "cwd": "/w", "parent_pid": opencode.pid})[0] == 0
        claude_id = "c7d3d95c-57f0-4359-8f4b-926a9bef5a3f"
        claude_path = cfd.transcript(claude_id)
        claude_path.write_bytes(b"".join(fixture_lines()))
        assert claude.hook("session-start", cfd.payload(claude_id))[0] == 0
        workspace = cfd.root / "cursor-work"
        cursor_path = Path(cursor_paths.transcript_path(str(cfd.home / ".cursor"), str(workspace), CURSOR_ID))
        cursor_path.parent.mkdir(parents=True)
        shutil.copy(CURSOR / "main.jsonl", cursor_path)
        assert cursor.hook("session-start", start_payload(workspace))[0] == 0
        r = codex.exec("say hello")
        assert r.returncode == 0, r.stderr[-2000:]
        [rollout] = codex.rollouts()
        codex_id = session_id_of(rollout)
        wait_shipped(cfd, codex_id, rollout)
        assert claude.hook("session-end", cfd.payload(claude_id, "SessionEnd", reason="other"))[0] == 0
        assert cursor.hook("session-end", dict(start_payload(workspace), reason="completed"))[0] == 0
        assert opencode.hook("session-end", {"session_id": oc_root})[0] == 0
        wait_until(lambda: not cfd.status()["sessions"], 30, what="every session to finish")
        for eid, path, provider in ((claude_id, claude_path, "claude-code"), (codex_id, rollout, "codex"),
                                    (CURSOR_ID, cursor_path, "cursor")):
            assert backend.provider(eid) == provider
            assert backend.lines(eid, path.name) == path.read_text().splitlines(), provider  # every line, once
        assert [e["payload"]["reason"] for e in backend.events(claude_id)] == ["other"]
        assert [e["payload"]["reason"] for e in backend.events(CURSOR_ID)] == ["completed"]
        assert backend.events(codex_id) == []
        oc_files = cfd.home / ".confab" / "opencode" / oc_root
        assert backend.provider(oc_root) == "opencode" and backend.events(oc_root) == []
        assert backend.lines(oc_root, "messages.jsonl") == (oc_files / "messages.jsonl").read_text().splitlines()
        kid = f"opencode/{oc_child}/messages.jsonl"
        assert backend.lines(oc_root, kid) == (oc_files / "children" / oc_child / "messages.jsonl").read_text().splitlines()
        assert len(backend.lines(oc_root, kid)) == 2
    finally:
        cursor.close()
        opencode.close()


def spawn_edges(directory: Path) -> list[tuple[str, str]]:
    """(parent, child) thread ids from Codex's own state DB, read-only."""
    import sqlite3

    [db] = directory.glob("state_*.sqlite")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT parent_thread_id, child_thread_id FROM thread_spawn_edges").fetchall()


def test_a_subagent_codex_spawns_is_shipped_under_its_root_once(cfd, codex, api):
    """The fake model calls Codex's own `spawn_agent` (then `wait_agent`): the real Codex runs a
    subagent in a thread of its own, with its own rollout and a spawn edge in its state DB. The child
    rollout arrives under the root session as an `agent` file, every line once, with its sidecar
    naming its parent; it is never a session of its own."""
    backend = cfd.backend
    cfd.master()
    api.spawn = "list the files here"
    r = codex.exec("spawn a helper")
    assert r.returncode == 0 and "hello from fake" in r.stdout, r.stderr[-2000:]
    turns = [json.loads(b["client_metadata"]["x-codex-turn-metadata"])["thread_source"] for b in api.bodies]
    assert "subagent" in turns, turns  # the subagent asked the model itself
    [(root_id, child_id)] = spawn_edges(codex.directory)
    by_id = {session_id_of(p): p for p in codex.rollouts()}
    assert set(by_id) == {root_id, child_id}
    root, child = by_id[root_id], by_id[child_id]
    wait_shipped(cfd, root_id, root)
    backend.wait_for(lambda: backend.file_bytes(root_id, child.name) == child.read_bytes(), timeout=30)

    assert backend.file_types(root_id) == {root.name: "transcript", child.name: "agent"}
    for path in (root, child):
        assert backend.lines(root_id, path.name) == path.read_text().splitlines()  # every line, once, in order
    assert "list the files here" in child.read_text() and backend.session_id(child_id) is None
    sidecars = {row["thread_uuid"]: row for row in backend.codex_rollouts()}
    assert set(sidecars) == {root_id, child_id}
    assert sidecars[child_id]["parent_thread_uuid"] == root_id and sidecars[child_id]["rollout_path"] == str(child)
    assert "parent_thread_uuid" not in sidecars[root_id]
    assert backend.events(root_id) == []
