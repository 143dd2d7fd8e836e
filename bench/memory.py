"""Memory per session and idle cost (issue 6, rows 6 and 7).

100 sessions with real workers (default 30 s interval and 5 s jitter), each on
a small fixture transcript whose first sync is done, then left idle:

- memory: PSS of every worker (psutil `memory_full_info`, from smaps: shared
  pages are split among the processes sharing them) and the master's RSS.
  Baseline: PSS of a bare `python -c "import time; time.sleep(...)"` of the
  same interpreter, measured alongside.
- idle cost: user+sys CPU of the master and of all workers together over a
  60 s window, as % of one core. Baseline: the CPU of one `python -c pass`
  (the window's cost reads as "so many interpreter starts").
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time

import psutil

from .common import (
    PROCS, PYTHON, TRANSCRIPTS, Backend, Figure, Install, log, python_pass_env, run_rusage, wait_until,
)

MiB = 1024 * 1024


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def start_idle_sessions(inst: Install, backend: Backend, n: int) -> None:
    fixture = (TRANSCRIPTS / "hello-world-script.jsonl").read_bytes()
    lines = fixture.count(b"\n")
    sids = [f"idle-{i:03d}" for i in range(n)]
    for sid in sids:
        inst.transcript(sid).write_bytes(fixture)
        reply = inst.register(sid, inst.transcript(sid))
        if not reply.get("ok"):
            raise RuntimeError(f"register {sid}: {reply}")
    wait_until(lambda: all(backend.has_all(s, {f"{s}.jsonl": lines}) for s in sids), 120, 0.2,
               f"the first sync of {n} sessions")
    sessions = inst.sessions()
    states = {s.get("state") for s in sessions.values()}
    if len(sessions) != n or states != {"syncing"}:
        raise RuntimeError(f"{len(sessions)} sessions, states {states}")


def run(quick: bool = False) -> list[Figure]:
    n = 100
    window = 15.0 if quick else 60.0
    backend = Backend()
    inst = Install("mem", backend)
    figures: list[Figure] = []
    bare = PROCS.popen([PYTHON, "-c", "import time; time.sleep(600)"], env=python_pass_env(),
                       stdin=subprocess.DEVNULL)
    try:
        master = inst.start_master()
        log(f"memory: starting {n} idle sessions")
        t0 = time.monotonic()
        start_idle_sessions(inst, backend, n)
        log(f"{n} sessions synced in {time.monotonic() - t0:.1f} s; settling")
        time.sleep(3.0)
        workers = master.children()
        if len(workers) != n:
            raise RuntimeError(f"{len(workers)} workers for {n} sessions")
        pss = [w.memory_full_info().pss / MiB for w in workers]
        uss = [w.memory_full_info().uss / MiB for w in workers]
        minfo = master.memory_full_info()
        bare_pss = psutil.Process(bare.pid).memory_full_info().pss / MiB
        med = statistics.median(pss)
        figures.append(Figure(f"memory: PSS per idle worker ({n} sessions)", med, "MiB", bare_pss,
                              "bare python sleeping, PSS", "<= 12 MB PSS per worker", max(pss) <= 12 * 1e6 / MiB,
                              spread=(f"median {med:.2f}, mean {statistics.mean(pss):.2f}, max {max(pss):.2f} MiB; "
                                      f"USS median {statistics.median(uss):.2f} MiB; all workers "
                                      f"{sum(pss):.0f} MiB PSS")))
        figures.append(Figure(f"memory: master RSS ({n} sessions)", minfo.rss / MiB, "MiB",
                              psutil.Process(bare.pid).memory_info().rss / MiB, "bare python sleeping, RSS",
                              "<= 40 MB", minfo.rss <= 40 * 1e6,
                              spread=f"master PSS {minfo.pss / MiB:.2f} MiB, USS {minfo.uss / MiB:.2f} MiB"))

        log(f"idle cost: {window:.0f} s window")
        procs = [master] + workers
        start = {p.pid: _cpu(p) for p in procs}
        chunks0 = backend.counts()["requests"]
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        end = {}
        for p in procs:
            try:
                end[p.pid] = _cpu(p)
            except psutil.NoSuchProcess:
                end[p.pid] = start[p.pid]
        requests = backend.counts()["requests"] - chunks0
        master_cpu = end[master.pid] - start[master.pid]
        workers_cpu = sum(end[w.pid] - start[w.pid] for w in workers)
        per_worker = sorted((end[w.pid] - start[w.pid]) for w in workers)
        wall, user, sys_, _, _ = run_rusage([PYTHON, "-c", "pass"], env=python_pass_env())
        unit = user + sys_
        figures.append(Figure(f"idle: master CPU ({n} sessions, {elapsed:.0f} s)", 100 * master_cpu / elapsed, "%",
                              unit, "one `python -c pass`, CPU s", "<= 1% of one core",
                              master_cpu / elapsed <= 0.01,
                              spread=f"{master_cpu:.3f} CPU s in {elapsed:.1f} s"))
        figures[-1].baseline = None  # a % against seconds is no ratio; the baseline is shown in the note
        figures[-1].notes.append(f"baseline: one `python -c pass` = {unit:.3f} CPU s; the master used "
                                 f"{master_cpu / unit:.1f} of those")
        figures.append(Figure(f"idle: all {n} workers' CPU ({elapsed:.0f} s)", 100 * workers_cpu / elapsed, "%",
                              None, "", "<= 2% of one core", workers_cpu / elapsed <= 0.02,
                              spread=(f"{workers_cpu:.3f} CPU s in {elapsed:.1f} s; per worker median "
                                      f"{statistics.median(per_worker) * 1000:.1f} ms, max {per_worker[-1] * 1000:.1f} ms;"
                                      f" {requests} backend requests in the window")))
        figures[-1].notes.append(f"baseline: one `python -c pass` = {unit:.3f} CPU s; all workers used "
                                 f"{workers_cpu / unit:.1f} of those")
        errors = inst.master_errors()
        if errors:
            figures[-1].notes.append(f"master log errors: {errors[:3]}")
    finally:
        if inst.master_proc is not None:  # 100 final syncs are not what we measure: kill the lot
            os.killpg(inst.master_proc.pid, signal.SIGKILL)
        inst.close()
        backend.stop()
    return figures
