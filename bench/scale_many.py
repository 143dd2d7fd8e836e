"""Many concurrent sessions (issue 15 item 5): up to 1,000 idle sessions on one master, in steps.

One master; sessions are added step by step (STEPS: 100, 250, 500, 1,000) through the hook
command (`confabctl hook session-start`, 4 at a time, the lean entry script as shipped), each
with the hello-world fixture as its transcript, until the backend holds every line. At each
step, with every session idle in `syncing`:

- registration: wall time of the step's hooks, per session (against `python -I -S -c pass`
  run the same way: the interpreter's own start);
- memory: PSS of every worker (median), the master's RSS and PSS;
- `confabctl status --json` and `confabctl ping`: whole process, median of 7, interleaved;
- the master's CPU while the step's sessions registered, per session.

Growth: each figure per session (or per step) is compared with the first step's; a master cost
that grows faster than the session count shows as a per-session figure that rises with N.

Memory guard: a step is run only when MemAvailable is at least twice what it needs by the
previous step's PSS per worker (the machine is shared); a skipped step is said in the figures.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import statistics
import time

import psutil

from .common import (
    PYTHON, TRANSCRIPTS, Backend, Figure, Install, log, median, python_pass_env, run_timed, wait_until,
)
from .hook_latency import lean_script_text

STEPS = (100, 250, 500, 1000)
CONCURRENCY = 4
MiB = 1024 * 1024


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run(quick: bool = False) -> list[Figure]:
    steps = (50, 100) if quick else STEPS
    fixture = (TRANSCRIPTS / "hello-world-script.jsonl").read_bytes()
    n_lines = fixture.count(b"\n")
    backend = Backend()
    inst = Install("many", backend, settings=f"max_sessions_per_user = {max(steps) + 10}\n")
    figures: list[Figure] = []
    rows = []
    try:
        master = inst.start_master()
        lean = inst.root / "bin" / "confabctl-lean"
        lean.parent.mkdir(exist_ok=True)
        lean.write_text(lean_script_text())
        lean.chmod(0o755)
        base_env = python_pass_env()
        sids: list[str] = []
        pss_per_worker = 25.0 * MiB
        for n in steps:
            need = (n - len(sids)) * pss_per_worker
            if _available() < 2 * need:
                log(f"scale-many: skipping {n} sessions: {need / MiB:.0f} MiB needed, "
                    f"{_available() / MiB:.0f} MiB available")
                rows.append((n, None))
                break
            new = [f"many-{i:04d}" for i in range(len(sids), n)]
            for sid in new:
                inst.transcript(sid).write_bytes(fixture)
            with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
                t0 = time.perf_counter()
                list(pool.map(lambda _: run_timed([PYTHON, "-I", "-S", "-c", "pass"], env=base_env), new))
                base = time.perf_counter() - t0
                cpu0 = sum(master.cpu_times()[:2])
                t0 = time.perf_counter()
                results = list(pool.map(lambda sid: run_timed([str(lean), "hook", "session-start"], env=inst.env,
                                                              stdin_bytes=inst.hook_input("SessionStart", sid)), new))
                reg = time.perf_counter() - t0
                master_cpu = sum(master.cpu_times()[:2]) - cpu0
            failed = [r for r in results if r[2] or r[4].strip()]
            sids += new
            wait_until(lambda: all(backend.has_all(s, {f"{s}.jsonl": n_lines}) for s in new), 300, 0.5,
                       f"the first sync of sessions {len(sids) - len(new)}..{len(sids)}")
            time.sleep(2.0)
            workers = master.children()
            pss = []
            for w in workers:
                try:
                    pss.append(w.memory_full_info().pss)
                except psutil.NoSuchProcess:
                    pass
            pss_per_worker = statistics.median(pss)
            minfo = master.memory_full_info()
            status_t, ping_t = [], []
            for _ in range(7):
                status_t.append(run_timed([str(lean), "status", "--json"], env=inst.env)[0])
                ping_t.append(run_timed([str(lean), "ping"], env=inst.env)[0])
            states = {}
            for s in inst.sessions().values():
                states[s.get("state")] = states.get(s.get("state"), 0) + 1
            row = dict(n=n, workers=len(workers), reg=reg, base=base, added=len(new), failed=len(failed),
                       master_cpu=master_cpu, pss=pss_per_worker, pss_sum=sum(pss), rss=minfo.rss, mpss=minfo.pss,
                       status=median(status_t), ping=median(ping_t), states=states)
            rows.append((n, row))
            log(f"scale-many: {n} sessions: {len(new)} hooks in {reg:.2f} s ({base:.2f} s of bare starts), "
                f"master CPU {master_cpu:.2f} s; worker PSS {pss_per_worker / MiB:.2f} MiB; master RSS "
                f"{minfo.rss / MiB:.1f} MiB; status {median(status_t) * 1000:.1f} ms, ping "
                f"{median(ping_t) * 1000:.1f} ms; states {states}")
        first = next(r for _, r in rows if r)
        for n, row in rows:
            if row is None:
                figures.append(Figure(f"scale: {n} concurrent sessions", float("nan"), "s", None, "",
                                      "measured", None, spread="skipped: not enough free memory on the shared machine"))
                continue
            per = row["reg"] / row["added"]
            figures.append(Figure(
                f"scale: {n} concurrent sessions, registration per session (step of {row['added']})", per, "s",
                row["base"] / row["added"], "python -I -S -c pass, same concurrency, per run", "measured",
                row["failed"] == 0 and row["workers"] == n,
                spread=(f"{row['added']} hooks in {row['reg']:.2f} s, {row['failed']} failed; {row['workers']} workers; "
                        f"master CPU {row['master_cpu'] / row['added'] * 1000:.2f} ms per registration "
                        f"(first step {first['master_cpu'] / first['added'] * 1000:.2f}); states {row['states']}")))
            figures.append(Figure(f"scale: {n} sessions, PSS per idle worker", row["pss"] / MiB, "MiB", None, "",
                                  "<= 12 MB PSS per worker", row["pss"] <= 12e6,
                                  spread=f"all workers {row['pss_sum'] / MiB:.0f} MiB PSS"))
            figures.append(Figure(f"scale: {n} sessions, master RSS", row["rss"] / MiB, "MiB", first["rss"] / MiB,
                                  f"master RSS with {first['n']} sessions", "<= 40 MB", row["rss"] <= 40e6,
                                  spread=(f"PSS {row['mpss'] / MiB:.1f} MiB; per session above the first step: "
                                          f"{(row['rss'] - first['rss']) / max(1, n - first['n']) / 1024:.1f} KiB"
                                          if n != first["n"] else f"PSS {row['mpss'] / MiB:.1f} MiB")))
            figures.append(Figure(f"scale: {n} sessions, `confabctl status --json`", row["status"], "s", row["ping"],
                                  "`confabctl ping`, same run", "measured", None,
                                  spread=(f"per session above ping: "
                                          f"{(row['status'] - row['ping']) / n * 1e6:.1f} us (first step "
                                          f"{(first['status'] - first['ping']) / first['n'] * 1e6:.1f} us)")))
    finally:
        if inst.master_proc is not None:  # 1,000 final syncs are not what is measured: kill the lot
            os.killpg(inst.master_proc.pid, signal.SIGKILL)
        inst.close()
        backend.stop()
    return figures
