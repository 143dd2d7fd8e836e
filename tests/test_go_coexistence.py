"""Beside the Go confab CLI: its prompt hook never starts a second uploader on a session confabd owns,
and its reaper never deletes a State confabd will resume (issue 14, item 3).

tests/go_client.py follows the Go client's rules exactly; here it watches confabd's real State files
all through a real session: syncing, the worker killed into crash backoff and a crash loop, the master
stopped (the session suspended) and a new master resuming it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime, timezone

from tests import go_client
from tests.conftest import backend_has_file, fixture_lines, pid_alive
from tests.waiting import wait_until


def append(path, lines):
    with open(path, "ab") as f:
        f.writelines(lines)


class GoWatcher(threading.Thread):
    """Runs the Go client's prompt-hook decision and its reaper on the sync dir, over and over."""

    def __init__(self, sync_dir, external_id):
        super().__init__(daemon=True)
        self.sync_dir, self.external_id = sync_dir, external_id
        self.violations: list[str] = []
        self.rounds = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            state_file = self.sync_dir / f"{self.external_id}.json"
            if go_client.prompt_hook_would_spawn(self.sync_dir, self.external_id):
                self.violations.append(f"prompt hook would spawn: {self._show(state_file)}")
            reaped = go_client.reap(self.sync_dir)
            if reaped:
                self.violations.append(f"reaper deleted {reaped}")
            self.rounds += 1
            time.sleep(0.01)

    @staticmethod
    def _show(path):
        try:
            return path.read_text()[:300]
        except OSError as exc:
            return str(exc)

    def wait_rounds(self, count):
        target = self.rounds + count
        wait_until(lambda: self.rounds >= target, what=f"{count} rounds of the Go rules")

    def stop(self):
        self.halt.set()
        self.join(10)


def state_age_s(path):
    started = json.loads(path.read_text())["started_at"]
    return (datetime.now(timezone.utc) - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds()


def test_go_rules_find_an_owner_through_crashes_and_a_stopped_master(cfd):
    backend, eid = cfd.backend, "beside-go"
    master = cfd.master()
    claude = cfd.claude()
    path, lines = cfd.transcript(eid), fixture_lines("coverage-test-fix.jsonl")
    append(path, lines[:10])
    assert claude.hook("session-start", cfd.payload(eid))[0] == 0
    backend.wait_for(lambda: len(backend.lines(eid, path.name)) == 10, timeout=20)

    watcher = GoWatcher(cfd.sync_dir, eid)
    watcher.start()
    try:
        # The reaper spares any State younger than 5 s: wait until its pid is what decides.
        wait_until(lambda: state_age_s(cfd.state_file(eid)) > go_client.REAP_MIN_AGE_S + 0.5, timeout=20)
        watcher.wait_rounds(5)

        killed, states = set(), set()
        while True:  # kill -9 every worker: backoff, then a crash loop (failed, retried slowly)
            s = wait_until(lambda: (x := cfd.session(eid)) and (x["state"] == "failed" or
                                                                x["worker_pid"] not in killed | {None}) and x,
                           timeout=30)
            if s["state"] == "failed":
                break
            os.kill(s["worker_pid"], signal.SIGKILL)
            killed.add(s["worker_pid"])
            wait_until(lambda: not pid_alive(s["worker_pid"]))
            s = cfd.session(eid)
            states.add(s["state"] if s else None)
            watcher.wait_rounds(3)
        assert "backoff" in states
        watcher.wait_rounds(5)

        append(path, lines[10:20])
        assert master.stop() == 0  # suspended: nothing of confabd runs now
        assert cfd.state_file(eid).exists()
        watcher.wait_rounds(20)

        cfd.master()  # resumes it
        append(path, lines[20:])
        backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
        watcher.wait_rounds(5)
    finally:
        watcher.stop()
    assert watcher.violations == []
    claude.kill9()
    backend.wait_for(lambda: backend.events(eid), timeout=30)
    wait_until(lambda: not cfd.state_file(eid).exists())
    assert backend.file_bytes(eid, path.name) == path.read_bytes()
    assert len(backend.events(eid)) == 1


def test_the_hooks_fallback_state_names_a_live_owner(cfd):
    """No master reachable: the hook's State carries Claude Code's pid, so the Go prompt hook holds off."""
    blocker = cfd.root / "not-a-dir"
    blocker.write_text("")
    env = dict(cfd.env, CONFABD_SOCKET=str(blocker / "control.sock"))
    eid = "fallback-beside-go"
    cfd.transcript(eid).write_bytes(b"".join(fixture_lines()))
    claude = cfd.claude(env)
    code, _, err = claude.hook("session-start", cfd.payload(eid))
    assert code == 0 and "recorded in" in err
    assert json.loads(cfd.state_file(eid).read_text())["pid"] == claude.pid
    assert not go_client.prompt_hook_would_spawn(cfd.sync_dir, eid)
