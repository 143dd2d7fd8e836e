"""Parent-exit latency and restart latency (issue 6, rows 3 and 4).

parent-exit: a fake Claude Code (a process whose command line has the word
`claude`) runs `confabctl hook session-start` through `/bin/sh -c`, as Claude
Code does; once the session's first sync is on the backend, lines are appended
(the 30 s default interval has not sent them) and the fake Claude Code is
SIGKILLed. Measured: kill -> the backend holds every line and the
`session_end` event (the final sync is done).

restart: a syncing worker (first sync done, new lines pending) is SIGKILLed.
Measured: kill -> the new worker has uploaded the pending lines. A fresh
session per run, so every kill is a first crash (the master's first backoff
step, 0.5 s, applies).

Baseline for both: one round trip of the same work with no process
lifecycle in it -- `python -c pass` (median), as for the hooks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from tests import fake_claude

from .common import (
    CONFABCTL, PROCS, PYTHON, TRANSCRIPTS, Backend, Figure, Install, log, median, python_pass_times,
    small_lines, spread, wait_until,
)

class FakeClaude:
    def __init__(self, inst: Install):
        self.inst = inst
        script = fake_claude.write_script(inst.root / "bin", CONFABCTL)
        self.proc = PROCS.popen([PYTHON, str(script)], env=inst.env, cwd=inst.root, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    def hook(self, event: str, payload: bytes) -> list:
        path = self.inst.root / f"hook-{event}-{time.monotonic_ns()}.json"
        path.write_bytes(payload)
        self.proc.stdin.write(f"{event} {path}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def kill9(self) -> float:
        os.kill(self.proc.pid, signal.SIGKILL)
        t = time.perf_counter()
        self.proc.wait(10)
        return t


def run(quick: bool = False) -> list[Figure]:
    runs = 3 if quick else 10
    base = python_pass_times(5 if quick else 15)
    b = median(base)
    fixture = (TRANSCRIPTS / "hello-world-script.jsonl").read_bytes()
    n_fixture = fixture.count(b"\n")
    backend = Backend()
    inst = Install("life", backend)
    figures: list[Figure] = []
    try:
        inst.start_master()
        # -- parent exit ----------------------------------------------------------
        log(f"parent-exit latency: {runs} fake Claude Code parents killed")
        exits, gone = [], []
        for i in range(runs):
            sid = f"parent-{i:03d}"
            inst.transcript(sid).write_bytes(fixture)
            claude = FakeClaude(inst)
            rc, out, err = claude.hook("session-start", inst.hook_input("SessionStart", sid))
            if rc != 0 or err.strip():
                raise RuntimeError(f"hook via fake claude failed: {rc} {err!r}")
            name = f"{sid}.jsonl"
            wait_until(lambda: backend.has_all(sid, {name: n_fixture}), 30, 0.02, f"{sid} first sync")
            session = inst.sessions()[sid]
            if session.get("parent_pid") != claude.proc.pid:
                raise RuntimeError(f"master watches parent {session.get('parent_pid')}, not the fake claude "
                                   f"{claude.proc.pid}")
            with open(inst.transcript(sid), "ab") as f:
                f.write(small_lines(25, sid))
            t0 = claude.kill9()
            wait_until(lambda: backend.has_all(sid, {name: n_fixture + 25}, event=True), 30, 0.005,
                       f"{sid} final sync after the parent died")
            exits.append(time.perf_counter() - t0)
            wait_until(lambda: sid not in inst.sessions(), 30, 0.01, f"{sid} to leave the master")
            gone.append(time.perf_counter() - t0)
            time.sleep(0.1)
        e = median(exits)
        fig = Figure("parent-exit: kill Claude Code -> final sync done (lines + session_end)", e, "s", b,
                     "python -c pass (median)", "<= 1.5 s median", e <= 1.5, spread=spread(exits))
        fig.notes.append(f"kill -> session gone from `status` (worker exited, State removed): median "
                         f"{median(gone) * 1000:.0f} ms ({spread(gone)})")
        fig.notes.append("the final sync includes finish_linger_ms = 300 (default): a last line written "
                         "just after exit is still caught")
        figures.append(fig)

        # -- restart ----------------------------------------------------------------
        log(f"restart latency: {runs} workers SIGKILLed while syncing")
        restarts = []
        for i in range(runs):
            sid = f"restart-{i:03d}"
            name = f"{sid}.jsonl"
            inst.transcript(sid).write_bytes(fixture)
            inst.register(sid, inst.transcript(sid))
            wait_until(lambda: backend.has_all(sid, {name: n_fixture}), 30, 0.02, f"{sid} first sync")
            old = wait_until(lambda: inst.sessions()[sid].get("worker_pid"), 10, 0.01, "a worker pid")
            with open(inst.transcript(sid), "ab") as f:
                f.write(small_lines(25, sid))
            os.kill(old, signal.SIGKILL)
            t0 = time.perf_counter()
            wait_until(lambda: backend.has_all(sid, {name: n_fixture + 25}), 30, 0.005,
                       f"{sid} resumed by a new worker")
            restarts.append(time.perf_counter() - t0)
            pid = inst.sessions()[sid].get("worker_pid")
            if not pid or pid == old:
                raise RuntimeError(f"{sid}: no new worker after kill -9 ({old} -> {pid})")
            time.sleep(0.1)
        r = median(restarts)
        fig = Figure("restart: kill -9 syncing worker -> new worker uploaded", r, "s", b,
                     "python -c pass (median)", "<= 1 s median", r <= 1.0, spread=spread(restarts))
        fig.notes.append("includes the master's first crash backoff step (BACKOFF_FIRST_S = 0.5 s, sessions.py)")
        figures.append(fig)
        errors = inst.master_errors()
        if errors:
            fig.notes.append(f"master log errors: {errors[:3]}")
    finally:
        inst.close()
        backend.stop()
    return figures
