"""Scale (issue 6, row 8): 200 sessions registered through the hook command within 10 s.

Each session's transcript starts with a fixture and keeps growing while the
sessions register and for a while after (a writer appends a line to every
transcript in turn). Then every session is ended through `confabctl hook
session-end` and the backend must hold every line of every transcript exactly
once (the backend refuses gaps and overlaps; equal content proves no line was
lost or doubled), plus one session_end each; no hook may fail, no worker may
crash, the master log must have no error.

Sync interval: the 30 s default. Baseline: 200 x `python -c pass` run the same
way (same concurrency), so the registration time reads against bare
interpreter starts.
"""

from __future__ import annotations

import concurrent.futures
import time

from .common import (
    CONFABCTL, PYTHON, TRANSCRIPTS, Backend, Figure, Install, log, python_pass_env, run_timed, small_lines,
    wait_until,
)

N = 200
CONCURRENCY = 4
GROW_EVERY_S = 0.25  # one line appended to every transcript this often


def run(quick: bool = False) -> list[Figure]:
    n = 50 if quick else N
    grow_s = 5.0 if quick else 15.0
    fixture = (TRANSCRIPTS / "hello-world-script.jsonl").read_bytes()
    backend = Backend()
    inst = Install("scale", backend, settings="max_sessions_per_user = 1000\n")
    figures: list[Figure] = []
    try:
        inst.start_master()
        sids = [f"scale-{i:03d}" for i in range(n)]
        for sid in sids:
            inst.transcript(sid).write_bytes(fixture)
        appended = {sid: 0 for sid in sids}

        def grow(count: int = 1) -> None:
            for sid in sids:
                with open(inst.transcript(sid), "ab") as f:
                    f.write(small_lines(count, f"{sid}-{appended[sid]}"))
                appended[sid] += 1

        base_env = python_pass_env()
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda _: run_timed([PYTHON, "-c", "pass"], env=base_env), range(n)))
            base = time.perf_counter() - t0
            log(f"scale: {n} x python -c pass ({CONCURRENCY} at a time): {base:.2f} s")

            def hook(sid: str):
                return sid, run_timed([CONFABCTL, "hook", "session-start"], env=inst.env,
                                      stdin_bytes=inst.hook_input("SessionStart", sid))

            t0 = time.perf_counter()
            futures = [pool.submit(hook, sid) for sid in sids]
            while not all(f.done() for f in futures):  # the transcripts grow meanwhile
                grow()
                time.sleep(GROW_EVERY_S)
            reg = time.perf_counter() - t0
        failures = [(sid, r[2], r[4][-300:]) for sid, r in (f.result() for f in futures) if r[2] or r[4].strip()]
        registered = inst.sessions()
        log(f"scale: {n} hooks done in {reg:.2f} s; {len(registered)} registered; {len(failures)} hook errors")
        until = time.monotonic() + grow_s
        while time.monotonic() < until:
            grow()
            time.sleep(GROW_EVERY_S)
        states = {}
        for s in inst.sessions().values():
            states[s.get("state")] = states.get(s.get("state"), 0) + 1
        restarts = sum(s.get("restarts", 0) for s in inst.sessions().values())
        log(f"scale: states {states}, restarts {restarts}; ending every session")
        t_end = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            ends = list(pool.map(lambda sid: run_timed([CONFABCTL, "hook", "session-end"], env=inst.env,
                                                       stdin_bytes=inst.hook_input("SessionEnd", sid)), sids))
        failures += [("end", r[2], r[4][-300:]) for r in ends if r[2] or r[4].strip()]
        expected = {sid: inst.transcript(sid).read_bytes() for sid in sids}

        def delivered(sid: str) -> bool:
            s = backend.session(sid)
            if not s:
                return False
            lines = s["files"].get(f"{sid}.jsonl", [])
            return (("\n".join(lines) + "\n").encode() == expected[sid]
                    and sum(e["event_type"] == "session_end" for e in s["events"]) == 1)

        pending = set(sids)
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            pending = {sid for sid in pending if not delivered(sid)}
            time.sleep(0.2)
        drain = time.perf_counter() - t_end
        wait_until(lambda: not inst.sessions(), 60, 0.2, "every session to finish")
        # exactly once: no more lines than the file, no duplicate session_end, nothing refused
        over = []
        for sid in sids:
            s = backend.session(sid) or {"files": {}, "events": []}
            held = s["files"].get(f"{sid}.jsonl", [])
            if len(held) != expected[sid].count(b"\n"):
                over.append((sid, len(held), expected[sid].count(b"\n")))
        counts = backend.counts()
        refused = {k: v for k, v in counts["by_status"].items() if str(k) not in ("200", "201")}
        errors = inst.master_errors()
        total_lines = sum(v.count(b"\n") for v in expected.values())
        ok = (len(registered) == n and not failures and not pending and not over and not errors
              and reg <= 10.0 and not refused)
        fig = Figure(f"scale: {n} sessions through the hook, growing transcripts", reg, "s", base,
                     f"{n} x python -c pass, {CONCURRENCY} at a time",
                     "all registered <= 10 s, every line once, no error", ok,
                     spread=(f"registered {len(registered)}/{n}; hook failures {len(failures)}; {total_lines} lines "
                             f"in all, {n - len(pending)}/{n} sessions byte-identical on the backend with one "
                             f"session_end, {len(over)} with a wrong count; backend non-2xx {refused or 'none'}; "
                             f"worker restarts {restarts}; states before the end {states}; end hooks -> all "
                             f"delivered {drain:.1f} s; backend requests {counts['requests']}"))
        if failures:
            fig.notes.append(f"hook failures: {failures[:3]}")
        if errors:
            fig.notes.append(f"master log errors ({len(errors)}): {errors[:3]}")
        if pending:
            fig.notes.append(f"not delivered: {sorted(pending)[:5]}")
        figures.append(fig)
    finally:
        inst.close()
        backend.stop()
    return figures
