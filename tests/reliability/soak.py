"""The soak: the fault matrix for N minutes, then its counts.

    python -m tests.reliability.soak --minutes 10 [--seed 7] [--parallel 3] [--json out.json]

(from the repository root, with the project's virtualenv: `.venv/bin/python -m ...`).
Runs rounds of sessions (each session: every fault kind once per round of
steps, in a random order) against a FakeBackend on 127.0.0.1 until the time
is up (a round in progress is finished, so it may run a little over), then
prints fault kind x times injected and lines lost, duplicated, reordered.
Exits 1 unless every line arrived exactly once, in order, with one
session_end per session. Loopback only; its files live in a temporary
directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.fakebackend import FakeBackend
from tests.reliability.harness import FAULTS, Score, run_matrix

MAX_MINUTES = 24 * 60


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help=f"how long (at most {MAX_MINUTES})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=3, help="sessions at a time")
    parser.add_argument("--sessions-per-round", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2 * len(FAULTS), help="faults per session")
    parser.add_argument("--json", help="also write the counts here")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in (0, {MAX_MINUTES}]")
    total, rounds = Score(), 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="confabd-soak-") as tmp, FakeBackend() as backend:
        while time.monotonic() - started < args.minutes * 60:
            root = Path(tmp) / f"round{rounds}"
            total.add(run_matrix(backend, root, args.sessions_per_round, args.steps,
                                 seed=args.seed * 100_000 + rounds, parallel=args.parallel))
            rounds += 1
            print(f"round {rounds}: {total.sessions} sessions, {total.lines} lines, lost {total.lost}, "
                  f"duplicated {total.duplicated}, reordered {total.reordered}", flush=True)
        requests = backend.counts()["requests"]
    elapsed = (time.monotonic() - started) / 60
    report = {
        "minutes": round(elapsed, 1), "rounds": rounds, "sessions": total.sessions, "lines": total.lines,
        "requests": requests, "injected": dict(sorted(total.injected.items())),
        "lost": total.lost, "duplicated": total.duplicated, "reordered": total.reordered,
        "wrong": total.wrong, "session_end_events": total.events,
    }
    print("\n| fault | times injected |\n|---|---|")
    for fault in FAULTS:
        print(f"| {fault} | {total.injected.get(fault, 0)} |")
    print(f"\n{elapsed:.1f} min, {rounds} rounds, {total.sessions} sessions, {total.lines} lines, "
          f"{requests} requests: lost {total.lost}, duplicated {total.duplicated}, reordered {total.reordered}, "
          f"foreign {total.wrong}, session_end events {total.events}/{total.sessions}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if total.perfect else 1


if __name__ == "__main__":
    sys.exit(main())
