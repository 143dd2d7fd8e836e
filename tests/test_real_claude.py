"""End to end with the real Claude Code binary (npm @anthropic-ai/claude-code, pinned in tests/claude_code.py).

Claude Code talks to a fake Messages API on 127.0.0.1, its hooks are installed by the
real `confabctl install-hooks`, a real master ships to the FakeBackend. A recorder hook
beside ours keeps every hook input Claude Code sent, so payloads are compared with
what Claude Code really said. The first run installs Claude Code with npm (skipped
when npm or the registry is not there); later runs reuse tests/.cache/.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest

from confabd.hooks_install import hook_command
from tests.claude_code import FakeAnthropic, claude_env, install, project_dir_name, write_claude_config
from tests.conftest import PYTHON, pid_alive
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    return install()


@pytest.fixture
def api():
    with FakeAnthropic() as fake:
        yield fake


class RealClaude:
    """Runs the real `claude` for one cfd installation: its HOME, a trusted project dir, our hooks."""

    def __init__(self, cfd, api: FakeAnthropic, binary: Path):
        self.cfd, self.api, self.binary = cfd, api, binary
        self.project = cfd.root / "proj"
        self.project.mkdir()
        self.tmp = cfd.root / "tmp"
        self.tmp.mkdir()
        self.recorded = cfd.root / "hook-inputs.jsonl"
        self.env = claude_env(cfd.env, cfd.home, api.url)
        self.env["TMPDIR"] = str(self.tmp)
        self.procs: list[subprocess.Popen] = []
        write_claude_config(cfd.home, trusted=(self.project,))
        self.settings = cfd.home / ".claude" / "settings.json"
        recorder = f"{{ cat; echo; }} >> '{self.recorded}'"
        self.settings.write_text(json.dumps({"hooks": {
            event: [{"matcher": "*", "hooks": [{"type": "command", "command": recorder}]}]
            for event in ("SessionStart", "SessionEnd")}}))

    # -- hooks -------------------------------------------------------------------

    def install_hooks(self) -> str:
        """The real `confabctl install-hooks`; returns the command prefix it wrote."""
        script = Path(sys.executable).parent / "confabctl"
        argv = [str(script)] if script.exists() else [PYTHON, "-m", "confabd.ctl"]
        r = subprocess.run([*argv, "install-hooks"], env=self.cfd.env, cwd=self.cfd.root,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        hooks = json.loads(self.settings.read_text())["hooks"]
        prefix = str(script) if script.exists() else f"{PYTHON} -m confabd.ctl"
        for event, arg in (("SessionStart", "session-start"), ("SessionEnd", "session-end")):
            commands = [h["command"] for group in hooks[event] for h in group["hooks"]]
            # ours went into the existing "*" group, beside the recorder, with an absolute path
            assert len(hooks[event]) == 1 and len(commands) == 2, hooks
            assert commands[1] == hook_command(prefix, arg), commands  # guarded: silent once confabctl is gone
        assert os.path.isabs(prefix.split()[0])
        return prefix

    def hook_inputs(self, event: str) -> list[dict]:
        if not self.recorded.exists():
            return []
        records = [json.loads(line) for line in self.recorded.read_text().splitlines() if line.strip()]
        return [r for r in records if r.get("hook_event_name") == event]

    # -- running claude ----------------------------------------------------------

    def run_print(self, *args: str, timeout: float = 60.0) -> tuple[int, subprocess.CompletedProcess]:
        """`claude -p ARGS...` to its end; (its pid, the result)."""
        proc = subprocess.Popen([str(self.binary), "-p", *args], cwd=self.project, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        self.procs.append(proc)
        out, err = proc.communicate(timeout=timeout)
        return proc.pid, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def transcript_dir(self) -> Path:
        return self.cfd.home / ".claude" / "projects" / project_dir_name(str(self.project))

    def close(self) -> None:
        for proc in self.procs:
            try:  # claude and anything it started (hooks, helpers) are in its own session
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


class Interactive:
    """An interactive `claude` on a pseudo-terminal; its output drained by a thread."""

    def __init__(self, rc: RealClaude):
        self.rc = rc
        self.master_fd, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen([str(rc.binary)], cwd=rc.project, env=rc.env, stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True)
        os.close(slave)
        rc.procs.append(self.proc)
        self.pid = self.proc.pid
        self.output = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master_fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.output.extend(data)

    def screen_text(self) -> str:
        """What it printed, escape sequences and all whitespace removed (the TUI moves the cursor for spaces)."""
        text = re.sub(r"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|.)", "",
                      self.output.decode(errors="replace"))
        return re.sub(r"\s+", "", text)

    def submit(self, prompt: str) -> None:
        os.write(self.master_fd, prompt.encode())
        wanted = re.sub(r"\s+", "", prompt)
        wait_until(lambda: wanted in self.screen_text(), 15, what=f"the prompt box to show {prompt!r}")
        os.write(self.master_fd, b"\r")

    def close(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        os.close(self.master_fd)
        self._reader.join(5)


@pytest.fixture
def rc(cfd, api, claude_bin):
    real = RealClaude(cfd, api, claude_bin)
    real.install_hooks()
    yield real
    real.close()


def assert_complete(backend, eid: str, transcript: Path) -> None:
    """The backend has the whole file, every line once, in order."""
    data = transcript.read_bytes()
    assert data.endswith(b"\n")
    assert backend.file_bytes(eid, transcript.name) == data
    assert len(backend.lines(eid, transcript.name)) == data.count(b"\n")


def wait_finished(cfd, eid: str, events: int, timeout: float = 15.0) -> None:
    cfd.backend.wait_for(lambda: len(cfd.backend.events(eid)) >= events, timeout=timeout)
    wait_until(lambda: cfd.session(eid) is None, timeout, what="the session to leave the master")
    wait_until(lambda: not cfd.state_file(eid).exists() and not cfd.inbox_file(eid).exists(), timeout,
               what="State and inbox to be removed")


def test_print_mode_ships_the_whole_transcript_once(cfd, rc):
    """`claude -p`: SessionStart, transcript, SessionEnd within a second; everything arrives, once."""
    backend = cfd.backend
    master = cfd.master()
    pid, r = rc.run_print("say hello")
    assert r.returncode == 0 and "Hello" in r.stdout, r.stderr
    assert [m["path"].split("?")[0] for m in rc.api.requests("/v1/messages")] == ["/v1/messages"]

    [start], [end] = rc.hook_inputs("SessionStart"), rc.hook_inputs("SessionEnd")
    eid = start["session_id"]
    assert start["source"] == "startup" and end["session_id"] == eid and end["reason"] == "other"
    transcript = rc.transcript_dir() / f"{eid}.jsonl"
    assert Path(start["transcript_path"]) == transcript and transcript.exists()

    wait_finished(cfd, eid, 1)
    assert_complete(backend, eid, transcript)
    events = backend.events(eid)
    assert [e["event_type"] for e in events] == ["session_end"]
    assert events[0]["payload"] == end  # the real SessionEnd hook input, as Claude Code sent it
    assert master.proc.poll() is None
    log = master.log_text()
    assert "Traceback" not in log, log


def test_continue_appends_and_ships_only_the_new_lines(cfd, rc):
    """`claude -p --continue` after the first session finished: same id, same file, grown; each line once."""
    backend = cfd.backend
    cfd.master()
    _, r = rc.run_print("say hello")
    assert r.returncode == 0, r.stderr
    eid = rc.hook_inputs("SessionStart")[0]["session_id"]
    transcript = rc.transcript_dir() / f"{eid}.jsonl"
    wait_finished(cfd, eid, 1)
    first = transcript.read_bytes()
    assert_complete(backend, eid, transcript)

    _, r = rc.run_print("--continue", "again")
    assert r.returncode == 0, r.stderr
    starts, ends = rc.hook_inputs("SessionStart"), rc.hook_inputs("SessionEnd")
    assert [s["session_id"] for s in starts] == [eid, eid] and starts[1]["source"] == "resume"
    assert [e["session_id"] for e in ends] == [eid, eid]
    assert sorted(rc.transcript_dir().glob("*.jsonl")) == [transcript]
    grown = transcript.read_bytes()
    assert grown.startswith(first) and len(grown) > len(first)

    wait_finished(cfd, eid, 2)
    assert_complete(backend, eid, transcript)
    events = backend.events(eid)
    assert [e["event_type"] for e in events] == ["session_end", "session_end"]
    assert [e["payload"] for e in events] == ends
    assert backend.session_id(eid)  # one backend session, resumed from its line count


def test_continue_while_the_first_session_is_still_finishing(cfd, rc):
    """`--continue` registers while the first session's final sync still runs: it starts again afterwards.

    The first run is held in `finishing` by the test backend, which keeps its
    session_end request until the test releases it (no timing window); the
    client's timeouts are raised so that the held request is not abandoned."""
    backend = cfd.backend
    settings = cfd.home / ".config" / "confabd" / "confabd.toml"
    settings.write_text(re.sub(r"(?m)^http_timeout_s = .*$", "http_timeout_s = 600.0", settings.read_text()))
    cfd.env["CONFABD_SHUTDOWN_TIMEOUT_MS"] = "600000"
    cfd.master()
    held = backend.gate("event")
    try:
        _, r = rc.run_print("say hello")
        assert r.returncode == 0, r.stderr
        eid = rc.hook_inputs("SessionStart")[0]["session_id"]
        assert held.arrived.wait(60), "the first session's session_end never reached the backend"
        _, r = rc.run_print("--continue", "again")
        assert r.returncode == 0, r.stderr
        assert backend.events(eid) == []  # the second run came and went while the first was still finishing
    finally:
        held.release()
    starts, ends = rc.hook_inputs("SessionStart"), rc.hook_inputs("SessionEnd")
    assert [s["session_id"] for s in starts + ends] == [eid] * 4 and starts[1]["source"] == "resume"
    transcript = rc.transcript_dir() / f"{eid}.jsonl"
    wait_finished(cfd, eid, 2, timeout=60)
    assert_complete(backend, eid, transcript)
    events = backend.events(eid)
    assert [e["event_type"] for e in events] == ["session_end", "session_end"]
    assert [e["payload"] for e in events] == ends


def test_a_session_whose_session_start_never_registered_is_caught_by_its_prompt(cfd, rc):
    """As for a session already open when the hooks were installed: no SessionStart of ours ran, and
    the UserPromptSubmit hook registers it; the whole transcript arrives, once, and it ends."""
    settings = json.loads(rc.settings.read_text())
    for group in settings["hooks"]["SessionStart"]:
        group["hooks"] = [h for h in group["hooks"] if "confabctl" not in h["command"]
                          and "confabd.ctl" not in h["command"]]
    assert any("user-prompt-submit" in h["command"] for g in settings["hooks"]["UserPromptSubmit"]
               for h in g["hooks"])
    rc.settings.write_text(json.dumps(settings))
    backend = cfd.backend
    cfd.master()
    _, r = rc.run_print("say hello")
    assert r.returncode == 0, r.stderr
    [start] = rc.hook_inputs("SessionStart")  # the recorder saw it; ours was not there
    eid = start["session_id"]
    transcript = rc.transcript_dir() / f"{eid}.jsonl"
    wait_finished(cfd, eid, 1)
    assert_complete(backend, eid, transcript)
    assert [e["event_type"] for e in backend.events(eid)] == ["session_end"]


def test_first_session_auto_starts_the_master(cfd, rc):
    """No master running: Claude Code's SessionStart hook starts one (`confabd --daemon`), which ships it all."""
    backend = cfd.backend
    _, r = rc.run_print("say hello")
    assert r.returncode == 0, r.stderr
    [start], [end] = rc.hook_inputs("SessionStart"), rc.hook_inputs("SessionEnd")
    eid = start["session_id"]
    master_pid = wait_until(lambda: cfd.status()["master"]["pid"], 10, what="the auto-started master")
    try:
        wait_finished(cfd, eid, 1)
        transcript = rc.transcript_dir() / f"{eid}.jsonl"
        assert_complete(backend, eid, transcript)
        [event] = backend.events(eid)
        assert event["payload"] == end
    finally:
        cfd.ctl("shutdown")
        try:
            wait_until(lambda: not pid_alive(master_pid), 15, what="the auto-started master to exit")
        finally:
            if pid_alive(master_pid):
                os.kill(master_pid, signal.SIGKILL)


def test_interactive_parent_found_and_kill_9_finishes_the_session(cfd, rc):
    """An interactive session: the master watches the real Claude Code; SIGKILL (no SessionEnd) still ends it."""
    backend = cfd.backend
    master = cfd.master()
    claude = Interactive(rc)
    try:
        wait_until(lambda: rc.hook_inputs("SessionStart"), 30, what="SessionStart")
        [start] = rc.hook_inputs("SessionStart")
        eid = start["session_id"]
        assert start["source"] == "startup"
        session = wait_until(lambda: cfd.session(eid), 10, what="the session in the master")
        # found through CLAUDE_PID / the process tree: the claude process itself, not the hook's shell
        assert session["parent_pid"] == claude.pid
        assert psutil.Process(claude.pid).cmdline()[0] == str(rc.binary)

        claude.submit("say hello")
        transcript = rc.transcript_dir() / f"{eid}.jsonl"
        wait_until(lambda: b"How can I help" in transcript.read_bytes(), 20, what="the reply in the transcript")
        wait_until(lambda: cfd.session(eid)["state"] == "syncing", 10, what="the worker to sync")
        backend.wait_for(lambda: backend.file_bytes(eid, transcript.name) == transcript.read_bytes(), timeout=10)
        assert backend.events(eid) == []

        killed = time.monotonic()
        os.kill(claude.pid, signal.SIGKILL)
        claude.proc.wait(10)
        backend.wait_for(lambda: backend.events(eid), timeout=30)
        print(f"\nsession_end {time.monotonic() - killed:.2f} s after the kill")  # how fast: bench/lifecycle.py
        wait_finished(cfd, eid, 1)
    finally:
        claude.close()
    assert rc.hook_inputs("SessionEnd") == []  # SIGKILL: Claude Code ran no SessionEnd hook
    assert_complete(backend, eid, transcript)
    [event] = backend.events(eid)
    payload = event["payload"]
    assert event["event_type"] == "session_end"
    assert payload["session_id"] == eid and payload["hook_event_name"] == "SessionEnd"
    assert payload["transcript_path"] == str(transcript) and payload["reason"] == "other"
    assert str(claude.pid) in payload["confabd_reason"], payload  # made by confabd: Claude Code exited
    assert not pid_alive(claude.pid)
    assert f"Claude Code (pid {claude.pid}) exited" in master.log_text()


def test_interactive_clear_and_exit(cfd, rc):
    """/clear ends one session and starts another in the same process; /exit ends that one. Both complete.

    Claude Code writes one more line (`cost-state`) to the old transcript about 0.1 s after SessionEnd
    "clear", and its process lives on: only the finishing worker's linger catches that line, so this
    test runs with the default linger, not the fixture's 50 ms.
    """
    backend = cfd.backend
    toml = cfd.home / ".config" / "confabd" / "confabd.toml"
    toml.write_text("".join(line for line in toml.read_text().splitlines(keepends=True)
                            if not line.startswith("finish_linger_ms")))
    cfd.master()
    claude = Interactive(rc)
    try:
        wait_until(lambda: rc.hook_inputs("SessionStart"), 30, what="SessionStart")
        first = rc.hook_inputs("SessionStart")[0]["session_id"]
        claude.submit("say hello")
        wait_until(lambda: len(rc.api.requests("/v1/messages")) == 1, 20, what="the first request")
        wait_until(lambda: cfd.session(first)["files"], 10, what="the first session to sync")
        claude.submit("/clear")
        wait_until(lambda: len(rc.hook_inputs("SessionStart")) == 2, 20, what="the second SessionStart")
        second = rc.hook_inputs("SessionStart")[1]
        assert second["source"] == "clear" and second["session_id"] != first
        claude.submit("again")
        wait_until(lambda: len(rc.api.requests("/v1/messages")) == 2, 20, what="the second request")
        wait_until(lambda: cfd.session(second["session_id"])["files"], 10, what="the second session to sync")
        claude.submit("/exit")
        claude.proc.wait(20)
    finally:
        claude.close()
    ends = rc.hook_inputs("SessionEnd")
    assert [(e["session_id"], e["reason"]) for e in ends] == [(first, "clear"),
                                                               (second["session_id"], "prompt_input_exit")]
    for eid, end in zip((first, second["session_id"]), ends):
        wait_finished(cfd, eid, 1)
        assert_complete(backend, eid, rc.transcript_dir() / f"{eid}.jsonl")
        [event] = backend.events(eid)
        assert event["payload"] == end


def _hook_problems(rc: RealClaude, run: subprocess.CompletedProcess, eid: str) -> list:
    """Every sign of a failed hook: Claude Code's stderr, its stream-json hook events, the transcript's attachments."""
    problems = [line for line in run.stderr.splitlines() if "hook" in line.lower()]
    for line in run.stdout.splitlines():
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("subtype") == "hook_response" and (event.get("exit_code"), event.get("outcome")) != (0, "success"):
            problems.append(event)
    for line in (rc.transcript_dir() / f"{eid}.jsonl").read_text().splitlines():
        attachment = json.loads(line).get("attachment") or {}
        if attachment.get("type", "").startswith("hook_") and (
                "error" in attachment["type"] or attachment.get("exitCode", 0) != 0 or attachment.get("stderr")):
            problems.append(attachment)
    return problems


def test_hooks_stay_silent_once_confabctl_is_removed(cfd, api, claude_bin):
    """`apt purge confabd` leaves each user's hooks in settings.json (a package does not edit home dirs).

    The guarded hooks install-hooks writes then do nothing, and the real Claude Code reports no hook
    error: not on stderr, not in its hook events, not in the transcript. The plain form older versions
    wrote is the control: there Claude Code prints `SessionEnd hook [...] failed: ... not found`.
    """
    bindir = cfd.root / "usr" / "bin"  # stands in for /usr/bin: the package's confabctl
    bindir.mkdir(parents=True)
    confabctl = bindir / "confabctl"
    confabctl.write_text(f"#!{PYTHON}\nimport sys\nfrom confabd.ctl import main\nsys.exit(main())\n")
    confabctl.chmod(0o755)
    rc = RealClaude(cfd, api, claude_bin)
    try:
        r = subprocess.run([str(confabctl), "install-hooks"], env=cfd.env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        hooks = json.loads(rc.settings.read_text())["hooks"]
        guarded = {event: [h["command"] for g in hooks[event] for h in g["hooks"]][1]
                   for event in ("SessionStart", "SessionEnd")}
        assert guarded["SessionEnd"] == hook_command(str(confabctl), "session-end")
        stream = ("--output-format", "stream-json", "--verbose", "--include-hook-events")

        # installed: the guarded hooks reach confabctl, the session ships as always
        cfd.master()
        _, run = rc.run_print(*stream, "say hello")
        assert run.returncode == 0, run.stderr
        eid = rc.hook_inputs("SessionEnd")[0]["session_id"]
        wait_finished(cfd, eid, 1)
        assert_complete(cfd.backend, eid, rc.transcript_dir() / f"{eid}.jsonl")
        assert _hook_problems(rc, run, eid) == []

        # removed: Claude Code still runs both hooks (the recorder beside ours sees them), silently
        confabctl.unlink()
        _, run = rc.run_print(*stream, "say hello")
        assert run.returncode == 0, run.stderr
        [_, start], [_, end] = rc.hook_inputs("SessionStart"), rc.hook_inputs("SessionEnd")
        assert start["session_id"] == end["session_id"] != eid
        assert _hook_problems(rc, run, end["session_id"]) == []
        assert cfd.backend.events(end["session_id"]) == []  # nothing ran confabctl

        # control: the plain hooks older versions wrote fail loudly in the same situation
        text = rc.settings.read_text()
        for event, arg in (("SessionStart", "session-start"), ("SessionEnd", "session-end")):
            text = text.replace(json.dumps(guarded[event])[1:-1], f"{confabctl} hook {arg}")
        rc.settings.write_text(text)
        _, run = rc.run_print(*stream, "say hello")
        eid = rc.hook_inputs("SessionEnd")[2]["session_id"]
        problems = _hook_problems(rc, run, eid)
        assert f"SessionEnd hook [{confabctl} hook session-end] failed" in run.stderr, run.stderr
        assert any(isinstance(p, dict) and p.get("type") == "hook_non_blocking_error" for p in problems), problems
    finally:
        rc.close()


def test_hooks_installed_while_a_session_is_open(cfd, api, claude_bin):
    """A Claude Code session started before `confabctl install-hooks`: no SessionStart of ours ran. Once the
    hooks are installed, its next prompt's UserPromptSubmit registers it, and the whole transcript, the lines
    written before the install included, arrives once; its end is shipped too."""
    rc = RealClaude(cfd, api, claude_bin)  # the recorder's hooks only: none of ours yet
    backend = cfd.backend
    cfd.master()
    claude = Interactive(rc)
    try:
        wait_until(lambda: rc.hook_inputs("SessionStart"), 30, what="SessionStart")
        eid = rc.hook_inputs("SessionStart")[0]["session_id"]
        transcript = rc.transcript_dir() / f"{eid}.jsonl"
        claude.submit("say hello")
        wait_until(lambda: transcript.exists() and b"How can I help" in transcript.read_bytes(), 20,
                   what="the first reply in the transcript")
        assert cfd.session(eid) is None  # nobody ships it
        rc.install_hooks()
        # Claude Code notices a changed settings.json on its own, a few seconds later (its file watcher):
        # prompt until one is seen by our UserPromptSubmit hook.
        deadline, prompts = time.monotonic() + 60, 1
        while cfd.session(eid) is None:
            assert time.monotonic() < deadline, "no prompt hook of ours ran within 60 s of the install"
            prompts += 1
            claude.submit(f"again {prompts}")
            wait_until(lambda: len(rc.api.requests("/v1/messages")) >= prompts
                       and transcript.read_bytes().count(b"How can I help") >= prompts, 20,
                       what=f"reply {prompts}")
        session = cfd.session(eid)
        assert session["parent_pid"] == claude.pid
        backend.wait_for(lambda: backend.file_bytes(eid, transcript.name) == transcript.read_bytes(), timeout=20)
        claude.submit("/exit")
        claude.proc.wait(20)
    finally:
        claude.close()
        rc.close()
    wait_finished(cfd, eid, 1)
    assert_complete(backend, eid, transcript)
    assert [e["event_type"] for e in backend.events(eid)] == ["session_end"]


def test_the_commit_link_hook_speaks_claude_codes_pretooluse_contract(cfd, rc):
    """The real binary runs our PreToolUse hook before a Bash `git commit` (the matcher install-hooks wrote)
    and takes its JSON: the call is denied, and the model is told, in the tool result, to add the
    `Confab-Link:` trailer with the session's URL."""
    backend = cfd.backend
    cfd.master()
    rc.api.tool_use = {"name": "Bash", "input": {"command": "git commit -m 'add a feature'",
                                                 "description": "Commit the change"}}

    def synced():  # the link needs the backend's session id in the State: the call waits for the worker's init
        starts = rc.hook_inputs("SessionStart")
        state = cfd.state_file(starts[0]["session_id"]) if starts else None
        return bool(state and state.exists() and json.loads(state.read_text()).get("confab_session_id"))

    rc.api.tool_use_ready = synced
    _, r = rc.run_print("commit this")
    assert r.returncode == 0, r.stderr
    eid = rc.hook_inputs("SessionStart")[0]["session_id"]
    url = f"{backend.url}/sessions/{backend.session_id(eid)}"
    results = [block for body in rc.api.bodies for message in body.get("messages") or ()
               if message.get("role") == "user" and isinstance(message.get("content"), list)
               for block in message["content"] if block.get("type") == "tool_result"]
    assert len(results) == 1, rc.api.bodies[-1:]
    said = json.dumps(results[0], ensure_ascii=False)
    assert f"Confab-Link: {url}" in said and "Confab is linking this commit to your session" in said, said
    assert results[0].get("is_error") is True
    wait_finished(cfd, eid, 1)
    assert_complete(backend, eid, rc.transcript_dir() / f"{eid}.jsonl")
