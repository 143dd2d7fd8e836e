"""Shared plumbing for the benchmarks: isolated installations, processes, figures.

Everything a benchmark starts goes through `Procs` (killed at the end, even on
Ctrl-C or an exception); every installation lives in its own temp dir (HOME,
CONFABD_SOCKET, CONFABD_STATE_DIR) that is removed afterwards; every wait has a
deadline; only 127.0.0.1 is used.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import quote

import psutil
from tests.data import FIXTURES, HOOK_INPUT, TRANSCRIPTS  # noqa: F401 - the bench modules import them from here
from tests.waiting import wait_until  # noqa: F401 - the one polling helper, used by the bench modules

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CONFABCTL = str(Path(PYTHON).parent / "confabctl")
API_KEY = "cfb_" + "b" * 40


# ---------------------------------------------------------------------------
# Figures


@dataclass
class Figure:
    """One line of the results table."""

    name: str
    value: float
    unit: str
    baseline: Optional[float]  # measured in the same run
    baseline_what: str
    target: str  # human text, e.g. "<= 2.0x baseline"
    passed: Optional[bool]  # None: informational
    spread: str = ""  # e.g. "p25-p75 12.1-13.4 ms, n=30"
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> Optional[float]:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline

    def verdict(self) -> str:
        return "info" if self.passed is None else ("PASS" if self.passed else "MISS")


def fmt(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def spread(values: list[float], unit: str = "s") -> str:
    """min / p25 / median / p75 / max of a sample, for the report."""
    if not values:
        return "n=0"
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return (f"n={len(values)} min {fmt(min(values), unit)} p25 {fmt(q[0], unit)} "
            f"p75 {fmt(q[2], unit)} max {fmt(max(values), unit)}")


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Processes


class Procs:
    """Every process the benchmark starts; `stop_all` ends them (process groups too)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.groups: list[int] = []

    def popen(self, argv, *, group: bool = False, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=group, **kw)
        self.procs.append(proc)
        if group:
            self.groups.append(proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.pid in self.groups:
            self.groups.remove(proc.pid)
            _killpg(proc.pid)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for pgid in self.groups:
            _killpg(pgid)
        self.groups.clear()
        for proc in self.procs:  # close pipes
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    try:
                        stream.close()
                    except OSError:
                        pass
        self.procs.clear()


def _killpg(pgid: int) -> None:
    try:  # workers live in the master's session: nothing may outlive the bench
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


PROCS = Procs()


def run_timed(argv, *, env, stdin_bytes: bytes = b"", cwd=None) -> tuple[float, float, int, bytes, bytes]:
    """Run a process to completion: (wall s, user+sys CPU s of it and its children, rc, out, err)."""
    r_in, w_in = os.pipe()
    os.write(w_in, stdin_bytes)  # hook inputs are small: fits the pipe buffer
    os.close(w_in)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=r_in, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    os.close(r_in)
    out, err = proc.communicate(timeout=120)
    wall = time.perf_counter() - t0
    # communicate() reaped it: resource accounting through RUSAGE_CHILDREN deltas is
    # racy with other children, so use /proc-free wait4 via a dedicated run below when CPU matters.
    return wall, 0.0, proc.returncode, out, err


def run_rusage(argv, *, env, cwd=None, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
               timeout: float = 600.0) -> tuple[float, float, float, int, bytes]:
    """Run to completion, reaping with wait4: (wall s, user s, sys s, rc, stderr)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=stderr)
    PROCS.procs.append(proc)
    deadline = time.monotonic() + timeout
    err_chunks = []
    import selectors

    sel = selectors.DefaultSelector()
    if proc.stderr:
        os.set_blocking(proc.stderr.fileno(), False)
        sel.register(proc.stderr, selectors.EVENT_READ)
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{argv[:3]} ran over {timeout} s")
        for key, _ in sel.select(0.05):
            chunk = key.fileobj.read()
            if chunk:
                err_chunks.append(chunk)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.stderr:
        rest = proc.stderr.read()
        if rest:
            err_chunks.append(rest)
        sel.close()
    return wall, ru.ru_utime, ru.ru_stime, proc.returncode, b"".join(err_chunks)


def python_pass_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("CONFAB", "CLAUDE", "NOTIFY_", "WATCHDOG_", "XDG_RUNTIME", "PYTHON"))}


# ---------------------------------------------------------------------------
# The test backend, standalone in its own process


class Backend:
    """`tests/fakebackend.py` as its own process on 127.0.0.1 (its CPU is never the client's)."""

    def __init__(self, extra_args: tuple[str, ...] = ()):
        env = python_pass_env()
        env["PYTHONPATH"] = str(REPO)
        self.proc = PROCS.popen([PYTHON, str(REPO / "tests" / "fakebackend.py"), "--port", "0",
                                 "--api-key", API_KEY, *extra_args],
                                env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"fake backend did not start: {line!r}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])
        self.ps = psutil.Process(self.proc.pid)
        self._conn: Optional[http.client.HTTPConnection] = None

    def get(self, path: str):
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self._conn.request("GET", path)
                resp = self._conn.getresponse()
                body = resp.read()
                return resp.status, (json.loads(body) if body else None)
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise

    def session(self, external_id: str) -> Optional[dict]:
        status, body = self.get("/_test/session/" + quote(external_id, safe=""))
        return body if status == 200 else None

    def has_all(self, external_id: str, files: dict[str, int], event: bool = False) -> bool:
        """The backend holds at least `files[name]` lines of each file (and a session_end event)."""
        s = self.session(external_id)
        if not s:
            return False
        for name, count in files.items():
            if len(s["files"].get(name, ())) < count:
                return False
        if event and not any(e["event_type"] == "session_end" for e in s["events"]):
            return False
        return True

    def counts(self) -> dict:
        return self.get("/_test/counts")[1]

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self._conn:
            self._conn.close()
        PROCS.stop(self.proc)


# ---------------------------------------------------------------------------
# One isolated installation: HOME, socket, sync dir, settings, a master


class Install:
    def __init__(self, name: str, backend: Optional[Backend], settings: str = "",
                 redaction: Optional[dict] = None, env_extra: Optional[dict] = None):
        # AF_UNIX paths are limited to 108 bytes: a short dir under /tmp.
        self.root = Path(tempfile.mkdtemp(prefix=f"cfdb-{name}-", dir="/tmp"))
        self.home = self.root / "home"
        self.project = self.home / ".claude" / "projects" / "-home-dev-proj"
        self.project.mkdir(parents=True)
        cfg_dir = self.home / ".config" / "confabd"
        cfg_dir.mkdir(parents=True)
        (cfg_dir / "confabd.toml").write_text(settings)
        self.sync_dir = self.home / ".confab" / "sync"
        self.socket = self.root / "s.sock"
        self.backend = backend
        confab = self.home / ".confab"
        confab.mkdir(exist_ok=True)
        config: dict = {}
        if backend is not None:
            config.update(backend_url=backend.url, api_key=API_KEY)
        if redaction is not None:
            config["redaction"] = redaction
        (confab / "config.json").write_text(json.dumps(config))
        env = python_pass_env()
        env.update(HOME=str(self.home), CONFABD_SOCKET=str(self.socket), CONFABD_STATE_DIR=str(self.sync_dir))
        if os.environ.get("CONFABD_BENCH_PYTHONPATH"):  # measure a scratch copy of confabd instead
            env["PYTHONPATH"] = os.environ["CONFABD_BENCH_PYTHONPATH"]
        env.update(env_extra or {})
        self.env = env
        self.master_proc: Optional[subprocess.Popen] = None
        self.master_log = self.root / "master.log"

    # -- master -----------------------------------------------------------------

    def start_master(self, log_level: str = "info", timeout: float = 20.0) -> psutil.Process:
        logf = open(self.master_log, "wb")
        self.master_proc = PROCS.popen([PYTHON, "-m", "confabd.master_cli", "--foreground", "--log-level", log_level],
                                       group=True, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
                                       stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        wait_until(lambda: self.master_proc.poll() is not None or self.ping(), timeout, 0.02, "the master to listen")
        if self.master_proc.poll() is not None:
            raise RuntimeError(f"master exited {self.master_proc.returncode}: {self.master_log.read_text()[-2000:]}")
        return psutil.Process(self.master_proc.pid)

    def stop_master(self) -> None:
        if self.master_proc is not None:
            PROCS.stop(self.master_proc, timeout=40)
            self.master_proc = None

    def request(self, message: dict, timeout: float = 10.0) -> dict:
        from confabd import client

        return client.request(str(self.socket), dict(message), timeout=timeout)

    def ping(self) -> bool:
        try:
            return bool(self.request({"type": "ping"}, 2.0).get("ok"))
        except Exception:  # noqa: BLE001
            return False

    def status(self) -> dict:
        return self.request({"type": "status"})

    def sessions(self) -> dict[str, dict]:
        return {s["external_id"]: s for s in self.status().get("sessions", [])}

    def register(self, external_id: str, transcript: Path, parent_pid: int = 0) -> dict:
        """The registration `confabctl start` sends (no hook ancestry)."""
        return self.request({"type": "register", "external_id": external_id, "transcript_path": str(transcript),
                             "cwd": "/home/dev/proj", "parent_pid": parent_pid, "claude_pid_hint": 0,
                             "hook_pid": 0})

    def workers(self) -> list[psutil.Process]:
        if self.master_proc is None:
            return []
        return psutil.Process(self.master_proc.pid).children()

    # -- files ------------------------------------------------------------------

    def transcript(self, external_id: str) -> Path:
        return self.project / f"{external_id}.jsonl"

    def hook_input(self, event: str, external_id: str) -> bytes:
        """The fixture hook input (session-start.json / session-end.json), pointed at this install."""
        name = "session-end.json" if event == "SessionEnd" else "session-start.json"
        payload = json.loads((HOOK_INPUT / name).read_text())
        if event == "UserPromptSubmit":  # the fields a prompt hook carries (tests/fixtures/hook-input/real-*)
            payload.update(hook_event_name="UserPromptSubmit", prompt="go on")
            payload.pop("source", None)
        if event in ("PreToolUse", "PostToolUse"):  # a Bash call that is neither a commit nor a PR: most of them
            payload.update(hook_event_name=event, tool_name="Bash", tool_input={"command": "ls -la src"})
            payload.pop("source", None)
            if event == "PostToolUse":
                payload["tool_response"] = {"stdout": "main.py\n", "stderr": "", "interrupted": False}
        payload.update(session_id=external_id, transcript_path=str(self.transcript(external_id)))
        return json.dumps(payload).encode()

    def master_errors(self) -> list[str]:
        try:
            text = self.master_log.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", line)]

    def close(self) -> None:
        self.stop_master()
        shutil.rmtree(self.root, ignore_errors=True)


def fixture_lines() -> list[bytes]:
    """All fixture transcript lines (with their newline), in file order."""
    lines: list[bytes] = []
    for path in sorted(TRANSCRIPTS.glob("*.jsonl")):
        lines.extend(path.read_bytes().splitlines(keepends=True))
    return lines


def small_lines(n: int, tag: str) -> bytes:
    """`n` small transcript-like JSON lines (unique content)."""
    return b"".join(
        json.dumps({"type": "user", "uuid": f"{tag}-{i}", "message": {"role": "user", "content": f"line {i} of {tag}"}}
                   ).encode() + b"\n" for i in range(n))


def python_pass_times(n: int) -> list[float]:
    env = python_pass_env()
    return [run_timed([PYTHON, "-c", "pass"], env=env)[0] for _ in range(n)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
