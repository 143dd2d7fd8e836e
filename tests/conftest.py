"""Shared fixtures for tests that run the real master, the real workers and confabctl.

- `cfd`: an isolated installation (`Confabd`): a temp HOME with a settings file
  tuned for fast tests, its own socket and sync dir, environment pointing at a
  FakeBackend; `.master()` starts a real `confabd --foreground` process,
  `.ctl(...)` runs confabctl, `.claude(...)` starts a fake Claude Code parent.
- `fake_backend`: a running FakeBackend.

Everything is a real process; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

from tests import fake_claude
from tests.data import FIXTURES, TRANSCRIPTS  # noqa: F401 - test modules import them from here
from tests.fakebackend import FakeBackend
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

TEST_SETTINGS = """\
transcript_poll_s = 0.05
transcript_wait_s = 10.0
finish_linger_ms = 50
http_timeout_s = 5.0
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Master:
    """A real master process (`python -m confabd.master_cli --foreground`)."""

    def __init__(self, cfd: "Confabd", *args: str):
        self.cfd = cfd
        self.log = cfd.root / f"master-{len(cfd.masters)}.log"
        self.log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "confabd.master_cli", "--foreground", "--log-level", "debug", *args],
            env=cfd.env, cwd=cfd.root, stdin=subprocess.DEVNULL, stdout=self.log_file,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> "Master":
        wait_until(lambda: self.proc.poll() is not None or self.cfd.ping(), timeout, what="the master to listen")
        assert self.proc.poll() is None, f"master exited {self.proc.returncode}:\n{self.log_text()}"
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.cleanup()

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        try:  # workers live in the master's session: nothing may outlive a test
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log_file.close()


class FakeClaude:
    """A process whose command line names `claude`, running the hooks as children via /bin/sh -c."""

    def __init__(self, cfd: "Confabd", env: Optional[dict] = None):
        self.cfd = cfd
        script = fake_claude.write_script(cfd.root / "bin", f"{PYTHON} -m confabd.ctl")
        self.proc = subprocess.Popen([PYTHON, str(script)], env=env or cfd.env, cwd=cfd.root,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def hook(self, event: str, payload) -> tuple[int, str, str]:
        path = self.cfd.root / f"hook-{event}-{time.monotonic_ns()}.json"
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
        self.proc.stdin.write(f"{event} {path}\n")
        self.proc.stdin.flush()
        return tuple(json.loads(self.proc.stdout.readline()))

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


class Confabd:
    """One isolated confabd installation for a test."""

    def __init__(self, tmp_path: Path, backend: Optional[FakeBackend]):
        self.root = tmp_path
        self.home = tmp_path / "home"
        self.project = self.home / ".claude" / "projects" / "-home-dev-proj"
        self.project.mkdir(parents=True)
        settings = self.home / ".config" / "confabd" / "confabd.toml"
        settings.parent.mkdir(parents=True)
        settings.write_text(TEST_SETTINGS)
        self.sync_dir = self.home / ".confab" / "sync"
        # AF_UNIX paths are limited to 108 bytes: keep the socket in a short dir.
        self.run_dir = Path(tempfile.mkdtemp(prefix="cfd-", dir="/tmp"))
        self.socket = self.run_dir / "run" / "control.sock"
        self.backend = backend
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CONFAB", "CLAUDE", "NOTIFY_", "WATCHDOG_", "XDG_RUNTIME"))}
        env.update(HOME=str(self.home), CONFABD_SOCKET=str(self.socket), CONFABD_STATE_DIR=str(self.sync_dir),
                   CONFAB_SYNC_INTERVAL_MS="200", CONFAB_SYNC_JITTER_MS="0",
                   CONFABD_SHUTDOWN_TIMEOUT_MS="10000", PYTHONPATH=str(REPO))
        if backend is not None:
            env.update(CONFAB_BACKEND_URL=backend.url, CONFAB_API_KEY=backend.api_key)
        self.env = env
        self.masters: list[Master] = []
        self.claudes: list[FakeClaude] = []

    # -- processes -----------------------------------------------------------

    def master(self, *args: str, wait: bool = True) -> Master:
        m = Master(self, *args)
        self.masters.append(m)
        return m.wait_ready() if wait else m

    def claude(self, env: Optional[dict] = None) -> FakeClaude:
        c = FakeClaude(self, env)
        self.claudes.append(c)
        return c

    def ctl(self, *args: str, input=None, timeout: float = 60.0, env: Optional[dict] = None):
        return subprocess.run([PYTHON, "-m", "confabd.ctl", *args], env=env or self.env, cwd=self.root,
                              input=input, capture_output=True, timeout=timeout,
                              text=not isinstance(input, bytes))

    def hook(self, event: str, payload, env: Optional[dict] = None):
        data = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        return self.ctl("hook", event, input=data, env=env)

    def ping(self) -> bool:
        from confabd import client

        try:
            return bool(client.request(str(self.socket), {"type": "ping"}, timeout=2.0).get("ok"))
        except (client.NoMaster, client.ProtocolError, OSError):
            return False

    def status(self, external_id: Optional[str] = None) -> dict:
        args = ["status", "--json"] + ([external_id] if external_id else [])
        r = self.ctl(*args)
        assert r.returncode in (0, 4), r.stderr  # 4: a session is failed
        return json.loads(r.stdout)

    def session(self, external_id: str) -> Optional[dict]:
        for s in self.status()["sessions"]:
            if s["external_id"] == external_id:
                return s
        return None

    # -- files -----------------------------------------------------------------

    def transcript(self, external_id: str) -> Path:
        return self.project / f"{external_id}.jsonl"

    def payload(self, external_id: str, event: str = "SessionStart", **extra) -> dict:
        body = {"session_id": external_id, "transcript_path": str(self.transcript(external_id)),
                "cwd": "/home/dev/proj", "hook_event_name": event}
        body.update(extra)
        return body

    def state_file(self, external_id: str) -> Path:
        return self.sync_dir / f"{external_id}.json"

    def inbox_file(self, external_id: str) -> Path:
        return self.sync_dir / f"{external_id}.inbox.jsonl"

    def close(self) -> None:
        for c in self.claudes:
            c.close()
        for m in self.masters:
            m.cleanup()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def fixture_lines(name: str = "hello-world-script.jsonl") -> list[bytes]:
    """A fixture transcript's lines, each with its newline."""
    return (TRANSCRIPTS / name).read_bytes().splitlines(keepends=True)


def backend_has_file(backend: FakeBackend, external_id: str, path: Path) -> bool:
    return backend.file_bytes(external_id, path.name) == path.read_bytes()


@pytest.fixture
def fake_backend():
    with FakeBackend() as backend:
        yield backend


@pytest.fixture
def cfd(tmp_path, fake_backend):
    installation = Confabd(tmp_path, fake_backend)
    yield installation
    installation.close()


@pytest.fixture
def workers():
    """Start real worker processes (tests/workers.py); every one is killed at the end of the test."""
    from tests.workers import WorkerProcess

    started: list = []

    def start(*args, **kwargs) -> WorkerProcess:
        w = WorkerProcess(*args, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def require_root_for(what: str, disable_var: str, alone: str) -> None:
    """A root-only container test: skipped (and said why) when `disable_var`=0 or not root,
    a failure under CI=true, where root is expected."""
    if os.environ.get(disable_var) == "0":
        pytest.skip(f"{what}: disabled with {disable_var}=0")
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} needs root, and CI runs as root")
        pytest.skip(f"{what} needs root (run `{alone}`)")
