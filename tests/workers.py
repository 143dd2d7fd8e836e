"""Running real session workers in tests: a real process, a real pipe, real files.

Workers are started with the `spawn` method here because the test process
runs the FakeBackend's threads (forking a threaded process is unsafe); the
master uses its own start method. Everything waits on conditions with
deadlines, never on bare sleeps.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path
from typing import Optional

import msgspec

from confabd import worker_api as api
from confabd.config import Settings
from confabd.store import SyncDir
from tests.data import FIXTURES, TRANSCRIPTS  # noqa: F401 - test modules import them from here


_ctx = multiprocessing.get_context("spawn")


class Home:
    """A throwaway HOME with a Claude project dir, a sync dir and a confab config."""

    def __init__(self, root: Path):
        self.path = root / "home"
        self.project = self.path / ".claude" / "projects" / "-home-dev-proj"
        self.project.mkdir(parents=True)
        self.sync_dir = self.path / ".confab" / "sync"
        self.archive = self.path / "archive.sqlite3"

    def configure_backend(self, url: str = "", api_key: str = "", **extra) -> None:
        config = {"backend_url": url, "api_key": api_key, **extra}
        path = self.path / ".confab" / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))

    def transcript(self, external_id: str) -> Path:
        return self.project / f"{external_id}.jsonl"

    def copy_fixture(self, name: str, external_id: str) -> Path:
        dest = self.transcript(external_id)
        shutil.copyfile(TRANSCRIPTS / name, dest)
        return dest

    def settings(self, **overrides) -> Settings:
        values = dict(
            archive_path=str(self.archive), sync_interval_ms=100, sync_jitter_ms=0,
            finish_linger_ms=20, shutdown_timeout_ms=20_000, transcript_poll_s=0.05,
            transcript_wait_s=10, http_timeout_s=5,
        )
        values.update(overrides)
        return Settings(**values)

    def store(self) -> SyncDir:
        return SyncDir(str(self.sync_dir))


class WorkerProcess:
    """One real worker process for a session, with the master's end of its pipe."""

    def __init__(self, home: Home, external_id: str, transcript: Path, settings: Optional[Settings] = None,
                 env: Optional[dict] = None, **spec_fields):
        self.home = home
        self.external_id = external_id
        self.spec = api.WorkerSpec(
            external_id=external_id, transcript_path=str(transcript), sync_dir=str(home.sync_dir),
            home=str(home.path), settings=settings or home.settings(), **spec_fields,
        )
        self.conn, child_conn = _ctx.Pipe()
        self.process = _ctx.Process(target=_worker_entry, args=(self.spec, child_conn, str(home.path), env or {}),
                                    daemon=True)
        self.process.start()
        child_conn.close()
        self.reports: list[api.Report] = []

    def read_reports(self) -> list[api.Report]:
        try:
            while self.conn.poll(0):
                self.reports.append(api.decode_report(self.conn.recv_bytes()))
        except (EOFError, OSError):
            pass
        return self.reports

    def last_report(self) -> Optional[api.Report]:
        reports = self.read_reports()
        return reports[-1] if reports else None

    def finish(self, reason: str = "test") -> None:
        self.conn.send_bytes(api.encode(api.Finish(reason=reason)))

    def wait_exit(self, timeout: float = 30.0) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.kill()
            raise AssertionError(f"worker {self.external_id} did not exit within {timeout} s")
        self.read_reports()
        return self.process.exitcode

    def kill(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(10)

    def close(self) -> None:
        self.kill()
        self.conn.close()


def _worker_entry(spec: api.WorkerSpec, conn, home: str, env: dict) -> None:
    os.environ["HOME"] = home
    for var in ("CONFAB_BACKEND_URL", "CONFAB_API_KEY", "CONFABD_STATE_DIR"):
        os.environ.pop(var, None)
    os.environ.update(env)  # what the master's environment would hold (e.g. CONFAB_API_KEY)
    from confabd import privileges
    from confabd.worker import run_worker

    if spec.run_as is not None:  # as worker_main does: nothing imported later needs root's access
        privileges.preload_worker_modules()
        privileges.become(spec.run_as)
    run_worker(spec, conn)


def file_lines(path: Path) -> list[str]:
    """A file's complete lines as the backend stores them (text, without newline)."""
    data = path.read_bytes()
    return [line.decode("utf-8", "replace") for line in data.split(b"\n")[:-1]]


def decode_state(path: Path):
    from confabd.records import State

    return msgspec.json.decode(path.read_bytes(), type=State)
