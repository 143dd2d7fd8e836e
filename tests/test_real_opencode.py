"""End to end with the real OpenCode CLI (npm opencode-ai, pinned in tests/opencode.py): the confabd
plugin installed by the real `confabctl install-hooks --provider opencode`, OpenCode against a fake
chat-completions API on 127.0.0.1, a real master, the FakeBackend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.opencode import FakeChat, install, opencode_env
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def opencode_bin() -> Path:
    return install()


def run(binary: Path, cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(binary), "run", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL, start_new_session=True)
    assert proc.returncode == 0 and "hello from fake" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def test_opencode_run_and_resume_ship_its_messages_once(cfd, opencode_bin, tmp_path):
    backend = cfd.backend
    with FakeChat() as api:
        env = opencode_env(cfd.env, tmp_path / "oc", api.url)
        env["PWD"] = str(tmp_path / "work")
        r = cfd.ctl("install-hooks", "--provider", "opencode", env=env)
        assert r.returncode == 0, r.stderr
        plugin = Path(env["XDG_CONFIG_HOME"]) / "opencode" / "plugins" / "confabd-sync.ts"
        assert plugin.exists()
        cfd.master()
        work = tmp_path / "work"
        work.mkdir()
        proc = run(opencode_bin, work, env, "say hello")
        sessions = list((cfd.home / ".confab" / "opencode").iterdir())
        eid = sessions[0].name
        wait_until(lambda: cfd.session(eid) is None, 60, what="the session to finish after OpenCode exited")
        before = len(backend.lines(eid, "messages.jsonl"))
        # resumed: no session.created, the reconcile events announce it; only the new messages are sent
        proc = run(opencode_bin, work, env, "--session", eid, "again")
    sessions = list((cfd.home / ".confab" / "opencode").iterdir())
    assert len(sessions) == 1, sessions
    eid = sessions[0].name
    messages = sessions[0] / "messages.jsonl"
    wait_until(lambda: cfd.session(eid) is None, 60, what="the session to finish after OpenCode exited")
    assert backend.provider(eid) == "opencode"
    wait_until(lambda: backend.lines(eid, "messages.jsonl") == messages.read_text().splitlines(), 30,
               what="the resumed session's messages at the backend")
    lines = messages.read_text().splitlines()
    assert backend.lines(eid, "messages.jsonl") == lines and len(lines) >= before + 2 and before >= 2
    assert len({json.loads(line)["info"]["id"] for line in lines}) == len(lines)  # no message twice
    roles = [json.loads(line)["info"]["role"] for line in lines]
    assert roles[:2] == ["user", "assistant"]
    first = json.loads(lines[0])["parts"][0]["text"]  # OpenCode 1.18 stores `run`'s message quoted
    assert "say hello" in first and backend.metadata(eid)["first_user_message"] == first
    for path in (sessions[0].parent, sessions[0], messages):  # ours, private
        assert oct(path.stat().st_mode & 0o077) == "0o0", path
    assert backend.events(eid) == []


def test_a_child_session_of_the_task_tool_ships_under_its_root_once(cfd, opencode_bin, tmp_path):
    """The fake model calls OpenCode's own `task` tool: the real OpenCode runs a subagent in a child
    session (parent_id = the root) and feeds its answer back; the child arrives under the root as
    `opencode/<child>/messages.jsonl` (an `agent` file), never as a session of its own, every message once."""
    backend = cfd.backend
    task = {"description": "look around", "prompt": "list the files here", "subagent_type": "general"}
    with FakeChat(task=task) as api:
        env = opencode_env(cfd.env, tmp_path / "oc", api.url)
        assert cfd.ctl("install-hooks", "--provider", "opencode", env=env).returncode == 0
        cfd.master()
        work = tmp_path / "work"
        work.mkdir()
        run(opencode_bin, work, env, "spawn a helper")
        child_turns = [b for b in api.bodies if json.dumps(b["messages"][-1]).find(task["prompt"]) >= 0]
        results = [b for b in api.bodies if b["messages"][-1]["role"] == "tool"]
    assert child_turns and results, [[m["role"] for m in b["messages"]] for b in api.bodies]
    assert "task" in {t["function"]["name"] for t in api.bodies[-1]["tools"]}  # the tool the root was offered
    [root] = list((cfd.home / ".confab" / "opencode").iterdir())
    eid = root.name
    [child_dir] = list((root / "children").iterdir())
    child = child_dir.name
    assert child in results[0]["messages"][-1]["content"]  # the task's result names the child session
    wait_until(lambda: cfd.session(eid) is None, 60, what="the session to finish after OpenCode exited")
    name = f"opencode/{child}/messages.jsonl"
    expected = {"messages.jsonl": (root / "messages.jsonl").read_text().splitlines(),
                name: (child_dir / "messages.jsonl").read_text().splitlines()}
    wait_until(lambda: backend.files(eid) == expected, 30, what="the root's and the child's messages at the backend")
    assert backend.file_types(eid) == {"messages.jsonl": "transcript", name: "agent"}
    assert backend.provider(eid) == "opencode" and backend.provider(child) is None  # no session of its own
    for lines in expected.values():
        assert len({json.loads(line)["info"]["id"] for line in lines}) == len(lines)  # no message twice
    kid = [json.loads(line) for line in expected[name]]
    assert [m["info"]["role"] for m in kid][:2] == ["user", "assistant"]
    assert all(m["info"]["sessionID"] == child for m in kid)
    assert task["prompt"] in json.dumps(kid[0]["parts"]) and "hello from fake" in json.dumps(kid[-1]["parts"])
    tools = [p for line in expected["messages.jsonl"] for p in json.loads(line)["parts"] if p.get("type") == "tool"]
    assert [(p["tool"], p["state"]["status"]) for p in tools] == [("task", "completed")]


def test_opencode_killed_mid_turn_ends_the_session_with_every_complete_message_once(cfd, opencode_bin, tmp_path):
    """kill -9 of OpenCode while its model is still answering: the master sees its parent die and finishes
    the session; every complete message (the prompt) is shipped once, the unfinished answer never."""
    backend = cfd.backend
    hold = threading.Event()
    with FakeChat(hold=hold) as api:
        env = opencode_env(cfd.env, tmp_path / "oc", api.url)
        env["PWD"] = str(tmp_path / "work")
        assert cfd.ctl("install-hooks", "--provider", "opencode", env=env).returncode == 0
        cfd.master()
        work = tmp_path / "work"
        work.mkdir()
        proc = subprocess.Popen([str(opencode_bin), "run", "say hello"], cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            assert api.held.wait(120), "OpenCode never asked the model"
            collected = cfd.home / ".confab" / "opencode"
            wait_until(lambda: collected.exists() and any(collected.iterdir()), 60, what="the session announced")
            [session_dir] = list(collected.iterdir())
            eid, messages = session_dir.name, session_dir / "messages.jsonl"
            wait_until(lambda: cfd.session(eid) is not None, 30, what="the session registered")
            wait_until(lambda: messages.exists() and messages.read_text().count("\n") >= 1, 60,
                       what="the prompt collected")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            hold.set()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    wait_until(lambda: cfd.session(eid) is None, 60, what="the session to finish after OpenCode was killed")
    lines = messages.read_text().splitlines()
    assert backend.lines(eid, "messages.jsonl") == lines and lines
    assert len({json.loads(line)["info"]["id"] for line in lines}) == len(lines)  # no message twice
    assert json.loads(lines[0])["info"]["role"] == "user"
    assert all(json.loads(line)["info"]["role"] != "assistant" or json.loads(line)["info"].get("finish")
               or json.loads(line)["info"].get("error") for line in lines)  # no unfinished answer
    assert backend.events(eid) == []
