"""The fault matrix: real workers, the test backend, real files, and faults between them.

One `Session` drives one Claude Code session as the worker sees it: it appends
lines to a transcript (and to agent files in both layouts), and between
appends injects one fault at a time: kill -9 of the worker, a kill while the
backend holds a chunk it then commits (the answer never heard), a committed
chunk whose answer is dropped, 5xx and 429 answers, an outage of every
endpoint, a truncation in place, a replacement by a new file. It keeps the
model of what the backend must end up holding (the server's numbering is the
truth: after a rewrite, lines up to what it held stay, the file's own lines
follow), finishes the session (again, when a finish stays unfinished), and
scores the backend's files against the model: lines lost, duplicated,
reordered, and session_end events.

Used by tests/reliability/test_fault_matrix.py (fast, in the default suite)
and tests/reliability/soak.py (long, behind a command). Loopback only.
"""

from __future__ import annotations

import collections
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from confabd import worker_api as api
from tests.waiting import wait_until
from tests.workers import Home, WorkerProcess

FAULTS = ("kill", "commit-then-kill", "commit-then-drop", "5xx", "429", "outage", "truncate", "replace",
          "agent-beside", "agent-subagents")

_gate_lock = threading.Lock()  # the backend's gate holds every chunk: one gated session at a time


@dataclass
class Score:
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    wrong: int = 0  # lines on the backend the model does not have at all
    events: int = 0
    sessions: int = 0
    lines: int = 0
    injected: collections.Counter = field(default_factory=collections.Counter)

    def add(self, other: "Score") -> None:
        for name in ("lost", "duplicated", "reordered", "wrong", "events", "sessions", "lines"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.injected.update(other.injected)

    @property
    def perfect(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.wrong) and self.events == self.sessions


def score_file(expected: list[str], got: list[str]) -> tuple[int, int, int, int]:
    """(lost, duplicated, reordered, wrong) of the backend's `got` against `expected` (unique lines)."""
    want = set(expected)
    counts = collections.Counter(got)
    lost = len(want - set(got))
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    wrong = sum(1 for line in counts if line not in want)
    position = {line: i for i, line in enumerate(expected)}
    seen = [position[line] for line in got if line in position]
    reordered = sum(1 for a, b in zip(seen, seen[1:]) if b < a)
    return lost, duplicated, reordered, wrong


class _File:
    def __init__(self, path: Path, tag: str):
        self.path = path
        self.tag = tag
        self.expected: list[str] = []
        self.seq = 0
        self.generation = 0

    def line(self, rng: random.Random) -> bytes:
        self.seq += 1
        pad = "p" * rng.choice((0, 5, 40, 300, 3000))
        return b'{"type":"x","f":"%s","g":%d,"n":%d,"pad":"%s"}\n' % (
            self.tag.encode(), self.generation, self.seq, pad.encode())

    def append(self, rng: random.Random, n: int, extra: bytes = b"") -> None:
        lines = [self.line(rng) for _ in range(n)] + ([extra] if extra else [])
        with open(self.path, "ab") as f:
            f.write(b"".join(lines))
        self.expected += [line[:-1].decode() for line in lines]

    def rewrite(self, rng: random.Random, replace: bool) -> None:
        """New content with more lines than the backend holds: it keeps its S, then gets ours from S+1."""
        held = len(self.expected)
        self.generation += 1
        lines = [self.line(rng) for _ in range(held + rng.randint(1, 4))]
        data = b"".join(lines)
        if replace:
            tmp = self.path.with_name(self.path.name + ".new")
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        else:
            with open(self.path, "r+b") as f:
                f.truncate(0)
                f.write(data)
        self.expected = self.expected[:held] + [line[:-1].decode() for line in lines[held:]]


class Session:
    """One session, its worker (restarted as needed) and its files."""

    def __init__(self, backend, home: Home, eid: str, rng: random.Random, settings=None):
        self.backend = backend
        self.home = home
        self.eid = eid
        self.rng = rng
        self.settings = settings or home.settings(sync_interval_ms=50, shutdown_timeout_ms=15_000)
        self.main = _File(home.transcript(eid), "main")
        self.files = {self.main.path.name: self.main}
        self.worker: WorkerProcess | None = None
        self.workers: list[WorkerProcess] = []
        self.injected: collections.Counter = collections.Counter()

    # -- running ---------------------------------------------------------------

    def start(self, **spec) -> None:
        self.worker = WorkerProcess(self.home, self.eid, self.main.path, settings=self.settings, **spec)
        self.workers.append(self.worker)

    def delivered(self) -> bool:
        return all(self.backend.lines(self.eid, name) == f.expected for name, f in self.files.items())

    def wait_delivered(self, timeout: float = 90) -> None:
        wait_until(self.delivered, timeout=timeout, what=f"{self.eid}: every line on the backend")

    def run(self, steps: int) -> Score:
        self.main.append(self.rng, 3)
        self.start()
        self.wait_delivered()
        plan: list[str] = []
        while len(plan) < steps:  # every kind once per round, in a random order
            round_ = list(FAULTS)
            self.rng.shuffle(round_)
            plan += round_
        for fault in plan[:steps]:
            self.injected[fault] += 1
            getattr(self, "_" + fault.replace("-", "_"))()
            self.wait_delivered()
        self.finish()
        return self.score()

    def finish(self) -> None:
        self.main.append(self.rng, 1)
        self.worker.finish("fault matrix")
        for _ in range(10):
            code = self.worker.wait_exit(60)
            if code == api.EXIT_DONE:
                return
            assert code == api.EXIT_UNFINISHED, f"{self.eid}: worker exit {code}"
            self.start(finish_reason="fault matrix retry")
        raise AssertionError(f"{self.eid}: never finished")

    def close(self) -> None:
        for w in self.workers:
            w.close()

    def score(self) -> Score:
        s = Score(sessions=1, injected=collections.Counter(self.injected))
        for name, f in self.files.items():
            lost, dup, reordered, wrong = score_file(f.expected, self.backend.lines(self.eid, name))
            s.lost += lost
            s.duplicated += dup
            s.reordered += reordered
            s.wrong += wrong
            s.lines += len(f.expected)
        s.events = len(self.backend.events(self.eid))
        return s

    # -- faults ----------------------------------------------------------------

    def _kill(self) -> None:
        self.main.append(self.rng, self.rng.randint(1, 5))
        if self.rng.random() < 0.5:  # at once, or after the worker may have started sending
            wait_until(lambda: len(self.backend.lines(self.eid, self.main.path.name)) > 0)
        self.worker.kill()
        self.start()

    def _commit_then_kill(self) -> None:
        with _gate_lock:
            gate = self.backend.gate("chunk")
            try:
                self.main.append(self.rng, self.rng.randint(1, 5))
                wait_until(gate.arrived.is_set, what="a chunk held by the backend")
                self.worker.kill()  # the backend commits it afterwards: the answer is never heard
            finally:
                gate.release()
        self.start()

    def _commit_then_drop(self) -> None:
        self.backend.commit_then_drop_next(1, "chunk")
        self.main.append(self.rng, self.rng.randint(1, 5))

    def _5xx(self) -> None:
        self.backend.fail_next(self.rng.randint(1, 2), self.rng.choice((500, 502, 503)), path="chunk")
        self.main.append(self.rng, self.rng.randint(1, 5))

    def _429(self) -> None:
        self.backend.fail_next(1, 429, retry_after=1, path=self.rng.choice(("chunk", None)))
        self.main.append(self.rng, self.rng.randint(1, 5))

    def _outage(self) -> None:
        self.backend.fail_next(2, 503)  # every endpoint, whoever asks next
        self.main.append(self.rng, self.rng.randint(1, 5))

    def _truncate(self) -> None:
        self.wait_delivered()
        self.main.rewrite(self.rng, replace=False)

    def _replace(self) -> None:
        self.wait_delivered()
        self.main.rewrite(self.rng, replace=True)

    def _agent_beside(self) -> None:
        self._agent(self.main.path.parent)

    def _agent_subagents(self) -> None:
        self._agent(self.main.path.parent / self.eid / "subagents")

    def _agent(self, directory: Path) -> None:
        agent_id = f"a{self.eid.replace('-', '')}{len(self.files):04d}"[:40]
        path = directory / f"agent-{agent_id}.jsonl"
        f = _File(path, agent_id)
        naming = b'{"type":"user","toolUseResult":{"agentId":"%s"}}\n' % agent_id.encode()
        self.main.append(self.rng, 1, extra=naming)
        if self.rng.random() < 0.5:  # named before it exists: wait for the naming line first
            self.wait_delivered()
        directory.mkdir(parents=True, exist_ok=True)
        self.files[path.name] = f
        f.append(self.rng, self.rng.randint(1, 6))
        if self.rng.random() < 0.5:
            self.worker.kill()
            self.start()
        f.append(self.rng, self.rng.randint(1, 3))


def run_matrix(backend, root: Path, sessions: int, steps: int, seed: int, parallel: int = 3) -> Score:
    """`sessions` sessions of `steps` faults each, `parallel` at a time; the summed score."""
    total = Score()
    errors: list[BaseException] = []
    lock = threading.Lock()
    queue = list(range(sessions))

    def runner() -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                index = queue.pop(0)
            home_root = root / f"s{index}"
            home_root.mkdir(parents=True, exist_ok=True)
            home = Home(home_root)
            home.configure_backend(backend.url, backend.api_key)
            session = Session(backend, home, f"matrix-{seed}-{index}", random.Random(seed * 1000 + index))
            try:
                result = session.run(steps)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                with lock:
                    errors.append(exc)
                return
            finally:
                session.close()
            with lock:
                total.add(result)

    threads = [threading.Thread(target=runner, daemon=True) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return total
