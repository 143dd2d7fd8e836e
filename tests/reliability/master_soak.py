"""The master-level soak: the real `confabd` master, fake Claude Code processes, faults, N minutes.

    python -m tests.reliability.master_soak --minutes 20 [--seed 7] [--live 6] [--json out.json]

(from the repository root, with the project's virtualenv: `.venv/bin/python -m ...`).

What runs: a real `confabd --foreground` master in user mode (tests/conftest.py's
Confabd: a throwaway HOME, its own socket), a FakeBackend on 127.0.0.1, and
`--live` sessions at a time, each a fake Claude Code process (tests/fake_claude.py)
that registers through the real `confabctl hook session-start` and grows its
transcript, with agent files in both layouts, truncations and replacements.
Every session ends one of the ways a session ends: its SessionEnd hook, its
Claude Code killed, `confabctl stop`, its Claude Code dying while no master runs
(adopted by the next master), or `--continue`: SessionEnd, then a new Claude
Code registering the same id while the first run is still finishing (its
session_end held by the backend), sometimes with the master killed then.

Faults, on a schedule scaled to the duration: kill -9 of the master and a
restart (~22 per run), kill -9 of a worker (~230), two outages of 32 s (the
backend stopped; the backend answering 503 to everything), 5xx and 429 storms,
committed chunks whose answer is dropped.

At the end every session is ended, and the soak waits (with a deadline) until
the master has none left; then it scores what the backend holds against what
the fake Claude Code processes wrote: lines lost, duplicated, reordered,
foreign, and session_end events (one per run, with the SessionEnd hook's
payload when a hook ran). Prints the fault matrix and the counts; exits 1
unless every count is 0, every run has its one session_end and no hook or
`confabctl stop` reported a problem. Loopback only; its files live in a
temporary directory, removed afterwards unless the run failed (then its path
is printed: the masters' logs are there).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import psutil

from tests.conftest import Confabd, FakeClaude
from tests.fakebackend import FakeBackend
from tests.reliability.harness import _File, score_file
from tests.waiting import wait_until

MAX_MINUTES = 24 * 60
ENDINGS = ("end-hook", "end-parent-death", "end-stop", "end-continue")
FAULTS = ("master-kill", "worker-kill", "outage-stopped", "outage-refusing", "5xx-storm", "429-storm",
          "commit-then-drop", "truncate", "replace", "agent-beside", "agent-subagents",
          "end-hook", "end-parent-death", "end-stop", "end-adopted-dead-parent", "end-continue",
          "end-continue-master-kill")
OUTAGE_S = 32.0


class SoakSession:
    """One session id: its runs (one per Claude Code process), its files, what it must get."""

    def __init__(self, soak: "MasterSoak", eid: str):
        self.soak = soak
        self.eid = eid
        self.main = _File(soak.cfd.transcript(eid), "main")
        self.files = {self.main.path.name: self.main}
        self.claude: Optional[FakeClaude] = None
        self.runs = 0
        self.ended_runs = 0
        self.payloads: list[Optional[dict]] = []  # per ended run: the hook's payload, None: synthetic
        self.steps_left = 0
        self.continues = 0

    @property
    def live(self) -> bool:
        return self.claude is not None

    def start_run(self, source: str) -> None:
        self.claude = self.soak.cfd.claude()
        self.runs += 1
        self.steps_left = self.soak.rng.randint(10, 60)
        code, out, err = self.claude.hook("session-start", self.soak.cfd.payload(self.eid, source=source))
        self.soak.check(f"{self.eid}: session-start hook", code, err)

    def ended(self, payload: Optional[dict]) -> None:
        self.ended_runs += 1
        self.payloads.append(payload)

    def drop_claude(self) -> None:
        if self.claude is not None:
            self.claude.kill9()
            self.claude = None

    def delivered(self, name: str) -> bool:
        return self.soak.backend.lines(self.eid, name) == self.files[name].expected


class MasterSoak:
    def __init__(self, root: Path, backend: FakeBackend, seed: int, minutes: float, live: int,
                 outages: bool = True):
        self.backend = backend
        self.cfd = Confabd(root, backend)
        self.rng = random.Random(seed)
        self.seconds = minutes * 60
        self.live_target = live
        self.sessions: list[SoakSession] = []
        self.injected: collections.Counter = collections.Counter()
        self.master = None
        self.gated = False  # an event gate is held: no worker kills (see kill_worker)
        self.next_id = 0
        self.problems: list[str] = []  # a hook or confabctl that said something went wrong
        self.outages = outages  # two of OUTAGE_S (the short variant in the suite has none)

    def check(self, what: str, code: int, err: str) -> None:
        """Hooks always exit 0; whatever they print on stderr is a problem (a refusal, a timeout)."""
        if code != 0 or err.strip():
            self.problems.append(f"{what}: exit {code}: {err.strip()}")
            print(f"problem: {self.problems[-1]}", file=sys.stderr, flush=True)

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        self.master = self.cfd.master()
        started = time.monotonic()
        period = self.seconds
        # ~22 master and ~230 worker kills a run, but never so often that a short run is only
        # crash loops (five crashes within a minute: failed, retried after failed_retry_s)
        master_every, worker_every = max(period / 23, 6.0), max(period / 240, 1.5)
        next_master_kill = started + master_every
        next_worker_kill = started + worker_every
        outages = [started + period * 0.3, started + period * 0.65] if self.outages else []
        outage_kinds = ["outage-stopped", "outage-refusing"]
        outage_until: Optional[float] = None
        outage_kind = ""
        while time.monotonic() - started < self.seconds:
            now = time.monotonic()
            if outage_until is None and outages and now >= outages[0]:
                outages.pop(0)
                outage_kind = outage_kinds.pop(0)
                self.outage_begin(outage_kind)
                outage_until = now + OUTAGE_S
            elif outage_until is not None and now >= outage_until:
                self.outage_end(outage_kind)
                outage_until = None
            if now >= next_master_kill:
                self.kill_master()
                next_master_kill = time.monotonic() + master_every
            if now >= next_worker_kill:
                self.kill_worker()
                next_worker_kill = time.monotonic() + worker_every
            if outage_until is None and self.rng.random() < 0.02:
                self.storm()
            self.fill()
            self.step(self.rng.choice([s for s in self.sessions if s.live]))
            time.sleep(0.05)  # pacing only: nothing is asserted on time
        if outage_until is not None:
            self.outage_end(outage_kind)
        for s in self.sessions:
            if s.live:
                self.end(s, self.rng.choice(ENDINGS[:3]))

    def fill(self) -> None:
        while sum(1 for s in self.sessions if s.live) < self.live_target:
            s = SoakSession(self, f"soak-{self.next_id:04d}-{self.rng.randrange(16 ** 6):06x}")
            self.next_id += 1
            self.sessions.append(s)
            if self.rng.random() < 0.5:  # else Claude Code creates it with its first lines
                s.main.append(self.rng, self.rng.randint(1, 4))
            s.start_run("startup")

    def step(self, s: SoakSession) -> None:
        s.steps_left -= 1
        if s.steps_left <= 0:
            ending = self.rng.choice(ENDINGS if s.continues < 2 else ENDINGS[:3])
            self.end(s, ending)
            return
        roll = self.rng.random()
        if roll < 0.06:
            self.rewrite(s, replace=self.rng.random() < 0.5)
        elif roll < 0.14:
            self.agent(s, beside=self.rng.random() < 0.5)
        else:
            s.main.append(self.rng, self.rng.randint(1, 5))
            for f in list(s.files.values())[1:]:
                if self.rng.random() < 0.2:
                    f.append(self.rng, self.rng.randint(1, 3))

    def rewrite(self, s: SoakSession, replace: bool) -> None:
        """Only once the backend holds the whole file: the model needs its S (harness._File)."""
        if not s.main.expected or not s.delivered(s.main.path.name):
            return  # nothing written this step: it is likely to be delivered by the next
        s.main.rewrite(self.rng, replace)
        self.injected["replace" if replace else "truncate"] += 1

    def agent(self, s: SoakSession, beside: bool) -> None:
        directory = s.main.path.parent if beside else s.main.path.parent / s.eid / "subagents"
        agent_id = f"a{s.eid.replace('-', '')}{len(s.files):03d}"
        path = directory / f"agent-{agent_id}.jsonl"
        f = _File(path, agent_id)
        naming = b'{"type":"user","toolUseResult":{"agentId":"%s"}}\n' % agent_id.encode()
        s.main.append(self.rng, 1, extra=naming)
        directory.mkdir(parents=True, exist_ok=True)
        s.files[path.name] = f
        if self.rng.random() < 0.5:  # else named before it exists: written on a later step
            f.append(self.rng, self.rng.randint(1, 6))
        self.injected["agent-beside" if beside else "agent-subagents"] += 1

    # -- endings ----------------------------------------------------------------

    def end(self, s: SoakSession, how: str) -> None:
        s.main.append(self.rng, 1)  # a last line, written just before the end
        if how == "end-hook":
            payload = self.cfd.payload(s.eid, "SessionEnd", reason=self.rng.choice(("exit", "prompt_input_exit")))
            code, _, err = s.claude.hook("session-end", payload)
            self.check(f"{s.eid}: session-end hook", code, err)
            s.ended(payload)
            s.drop_claude()
        elif how == "end-parent-death":
            s.drop_claude()
            s.ended(None)
        elif how == "end-stop":
            r = self.cfd.ctl("stop", s.eid)
            self.check(f"{s.eid}: confabctl stop", r.returncode, r.stderr)
            s.ended(None)
            s.drop_claude()
        else:
            self.continue_while_finishing(s)
            return
        self.injected[how] += 1

    def continue_while_finishing(self, s: SoakSession) -> None:
        """SessionEnd; its session_end held by the backend; `--continue` registers the id again."""
        gate = self.backend.gate("event")
        self.gated = True
        try:
            payload = self.cfd.payload(s.eid, "SessionEnd", reason="exit")
            code, _, err = s.claude.hook("session-end", payload)
            self.check(f"{s.eid}: session-end hook", code, err)
            s.ended(payload)
            s.drop_claude()
            try:  # held (unless the backend is down: then it is finishing anyway)
                wait_until(gate.arrived.is_set, timeout=20, what="a session_end held by the backend")
            except AssertionError:
                pass
            s.continues += 1
            s.start_run("resume")
            if self.rng.random() < 0.5:
                self.injected["end-continue-master-kill"] += 1
                self.kill_master(gate=gate)
        finally:
            gate.release()
            self.gated = False
        self.injected["end-continue"] += 1

    # -- faults -------------------------------------------------------------------

    def kill_master(self, gate=None) -> None:
        """kill -9 the master (its workers are orphaned and notice), maybe a Claude Code dies
        meanwhile (the next master adopts and finishes it), lines are written; a new master."""
        self.master.kill9()
        self.injected["master-kill"] += 1
        live = [s for s in self.sessions if s.live]
        for s in live:
            if self.rng.random() < 0.5:
                s.main.append(self.rng, self.rng.randint(1, 3))
        if live and gate is None and self.rng.random() < 0.3:
            s = self.rng.choice(live)
            s.main.append(self.rng, 1)
            s.drop_claude()
            s.ended(None)
            self.injected["end-adopted-dead-parent"] += 1
        if gate is not None and self.rng.random() < 0.5:
            gate.release()  # the orphaned worker's session_end goes through while no master runs
        self.master = self.cfd.master()

    def kill_worker(self) -> None:
        if self.gated:  # a worker killed with its session_end held but committed later would send
            return      # a second one: a window we do not claim to close (docs/RELIABILITY.md)
        try:
            workers = psutil.Process(self.master.pid).children()
        except psutil.Error:
            return
        if not workers:
            return
        try:
            os.kill(self.rng.choice(workers).pid, signal.SIGKILL)
            self.injected["worker-kill"] += 1
        except ProcessLookupError:
            pass

    def storm(self) -> None:
        with self.backend._lock:  # one storm at a time: queued faults must not pile up for the end
            if self.backend._faults:
                return
        kind = self.rng.choice(("5xx-storm", "429-storm", "commit-then-drop"))
        if kind == "5xx-storm":
            self.backend.fail_next(self.rng.randint(3, 20), self.rng.choice((500, 502, 503)),
                                   path=self.rng.choice(("chunk", None)))
        elif kind == "429-storm":
            self.backend.fail_next(self.rng.randint(3, 20), 429, retry_after=self.rng.choice((1, 2, None)),
                                   path=self.rng.choice(("chunk", None)))
        else:
            self.backend.commit_then_drop_next(1, "chunk")
        self.injected[kind] += 1

    def outage_begin(self, kind: str) -> None:
        self.injected[kind] += 1
        if kind == "outage-stopped":
            self.backend.stop()
        else:
            self.backend.fail_next(1_000_000, 503)

    def outage_end(self, kind: str) -> None:
        if kind == "outage-stopped":
            self.backend.start()
        else:
            self.backend.clear_faults()

    # -- the end ------------------------------------------------------------------

    def wait_all_finished(self, timeout: float) -> bool:
        def finished() -> bool:
            if any(len(self.backend.events(s.eid)) < s.ended_runs for s in self.sessions):
                return False
            return not self.cfd.status()["sessions"]
        try:
            wait_until(finished, timeout=timeout, interval=0.5, what="every session finished")
            return True
        except AssertionError as exc:
            print(f"not finished: {exc}", file=sys.stderr)
            for s in self.sessions:
                events = len(self.backend.events(s.eid))
                if events < s.ended_runs:
                    print(f"  {s.eid}: {events} of {s.ended_runs} session_end events", file=sys.stderr)
            try:
                for row in self.cfd.status()["sessions"]:
                    print(f"  still in the master: {row['external_id']} {row['state']} "
                          f"{row['last_error']}", file=sys.stderr)
            except (AssertionError, ValueError) as status_error:
                print(f"  no status: {status_error}", file=sys.stderr)
            return False

    def score(self) -> dict:
        totals = collections.Counter()
        bad_sessions = []
        for s in self.sessions:
            for name, f in s.files.items():
                lost, dup, reordered, wrong = score_file(f.expected, self.backend.lines(s.eid, name))
                totals.update(lost=lost, duplicated=dup, reordered=reordered, foreign=wrong, lines=len(f.expected))
                if lost or dup or reordered or wrong:
                    bad_sessions.append(f"{s.eid}/{name}: lost {lost} dup {dup} reordered {reordered} "
                                        f"foreign {wrong}")
            events = self.backend.events(s.eid)
            totals["runs"] += s.ended_runs
            totals["session_end_events"] += len(events)
            good = len(events) == s.ended_runs and all(
                e["event_type"] == "session_end" and (want is None and "confabd_reason" in e["payload"]
                                                       or e["payload"] == want)
                for e, want in zip(events, s.payloads))
            if not good:
                totals["session_end_wrong"] += 1
                bad_sessions.append(f"{s.eid}: session_end events {[e['payload'] for e in events]}, "
                                    f"expected {s.payloads}")
        totals["sessions"] = len(self.sessions)
        return {"totals": dict(totals), "bad": bad_sessions}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help=f"how long (at most {MAX_MINUTES})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--live", type=int, default=6, help="sessions at a time")
    parser.add_argument("--finish-timeout", type=float, default=400.0,
                        help="seconds to wait for every session to finish at the end")
    parser.add_argument("--json", help="also write the counts here")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in (0, {MAX_MINUTES}]")
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="confabd-master-soak-")
    with FakeBackend() as backend:
        backend._port = int(backend.url.rsplit(":", 1)[1])  # an outage restarts it on the same port
        soak = MasterSoak(Path(tmp), backend, args.seed, args.minutes, args.live)
        try:
            soak.run()
            finished = soak.wait_all_finished(args.finish_timeout)
            result = soak.score()
            requests = backend.counts()["requests"]
        finally:
            soak.cfd.close()
    elapsed = (time.monotonic() - started) / 60
    t = result["totals"]
    print("\n| fault | times injected |\n|---|---|")
    for fault in FAULTS:
        print(f"| {fault} | {soak.injected.get(fault, 0)} |")
    print(f"\n{elapsed:.1f} min (seed {args.seed}, {args.live} live sessions), {t.get('sessions', 0)} sessions, "
          f"{t.get('runs', 0)} runs, {t.get('lines', 0)} lines, {requests} requests, "
          f"{len(soak.cfd.masters)} masters: lost {t.get('lost', 0)}, duplicated {t.get('duplicated', 0)}, "
          f"reordered {t.get('reordered', 0)}, foreign {t.get('foreign', 0)}, session_end events "
          f"{t.get('session_end_events', 0)}/{t.get('runs', 0)} ({t.get('session_end_wrong', 0)} sessions wrong)"
          f"; {len(soak.problems)} problems{'' if finished else '; NOT ALL FINISHED'}")
    for line in result["bad"][:50] + soak.problems[:50]:
        print("  " + line)
    if args.json:
        Path(args.json).write_text(json.dumps({"minutes": round(elapsed, 1), "seed": args.seed,
                                               "injected": dict(sorted(soak.injected.items())),
                                               "finished": finished, "problems": soak.problems, **t},
                                              indent=1) + "\n")
    perfect = finished and not soak.problems and not any(
        t.get(k) for k in ("lost", "duplicated", "reordered", "foreign", "session_end_wrong"))
    if perfect:
        shutil.rmtree(tmp, ignore_errors=True)
    else:  # the masters' logs (master-N.log) say what happened
        print(f"kept for a look: {tmp}")
    return 0 if perfect else 1


if __name__ == "__main__":
    sys.exit(main())
