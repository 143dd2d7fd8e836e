"""Profiles for issue 15's two misses (item 4 the hook, item 5 the master at many sessions).

    .venv/bin/python -m bench.master_profile hook          # where a session-start hook's time goes
    .venv/bin/python -m bench.master_profile many 500 50   # py-spy of the master: 50 registrations at 0 and at 500
    .venv/bin/python -m bench.master_profile compare shipped early=/tmp/copy1 ...  # interleaved hooks, one master each

hook: interleaved rounds of `python -I -S -c pass`, the shipped (lean, -IS) entry script's
`hook session-start` (new session) and `hook user-prompt-submit` (owned session), plus the
hook's `-X importtime` and the master's accept-to-reply time from `strace -f -tt` of the master.
many: `py-spy record` (raw, collapsed stacks) of the master while 50 new sessions register
through the hook, first with none live, then with N live; prints the top self and inclusive
frames of both. Set CONFABD_BENCH_PYTHONPATH to profile a scratch copy of confabd (a prototype).
py-spy is not a dependency: `pip install py-spy` into .venv to run `many`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import PYTHON, TRANSCRIPTS, Backend, Install, log, median, python_pass_env, run_timed, wait_until
from .hook_latency import lean_script_text

KEEP = ""
FIXTURE = TRANSCRIPTS / "hello-world-script.jsonl"


def _install(name: str, cap: int) -> tuple[Backend, Install, str]:
    backend = Backend()
    inst = Install(name, backend, settings=f"max_sessions_per_user = {cap}\n")
    inst.start_master()
    lean = inst.root / "bin" / "confabctl-lean"
    lean.parent.mkdir(exist_ok=True)
    lean.write_text(lean_script_text())
    lean.chmod(0o755)
    return backend, inst, str(lean)


def _hook(inst: Install, lean: str, event: str, sid: str):
    inst.transcript(sid).write_bytes(FIXTURE.read_bytes())
    verb = {"SessionStart": "session-start", "UserPromptSubmit": "user-prompt-submit"}[event]
    r = run_timed([lean, "hook", verb], env=inst.env, stdin_bytes=inst.hook_input(event, sid))
    if r[2]:
        raise RuntimeError(f"hook {verb} failed: {r[3]!r} {r[4]!r}")
    return r


def hook(rounds: int = 60, strace_only: bool = False) -> None:
    backend, inst, lean = _install("hprof", rounds * 2 + 20)
    try:
        if strace_only:
            _strace_master(inst, lean)
            return
        base_env = python_pass_env()
        base, start, prompt = [], [], []
        for i in range(rounds):
            base.append(run_timed([PYTHON, "-I", "-S", "-c", "pass"], env=base_env)[0])
            start.append(_hook(inst, lean, "SessionStart", f"hp-{i:03d}")[0])
            prompt.append(_hook(inst, lean, "UserPromptSubmit", f"hp-{i:03d}")[0])
        b = median(base)
        log(f"hook: python -I -S -c pass {b * 1000:.1f} ms; session-start {median(start) * 1000:.1f} ms "
            f"({median(start) / b:.2f}x); user-prompt-submit {median(prompt) * 1000:.1f} ms ({median(prompt) / b:.2f}x)")
        # -X importtime of the lean script's hook path (fastest of 5 totals)
        best = None
        for i in range(5):
            sid = f"hpi-{i}"
            inst.transcript(sid).write_bytes(FIXTURE.read_bytes())
            r = run_timed([PYTHON, "-IS", "-X", "importtime", lean, "hook", "session-start"], env=inst.env,
                          stdin_bytes=inst.hook_input("SessionStart", sid))
            rows = [line.split("|") for line in r[4].decode().splitlines() if line.startswith("import time:")][1:]
            rows = [(int(s.split(":")[1]), int(c), name.rstrip()) for s, c, name in rows]
            top_level = sum(c for _, c, name in rows if not name.startswith("  ") and name.strip())
            if best is None or top_level < best[0]:
                best = (top_level, rows)
        log(f"hook -X importtime: top-level cumulative {best[0] / 1000:.1f} ms; biggest cumulative:")
        for s, c, name in sorted(best[1], key=lambda x: -x[1])[:25]:
            log(f"    {c / 1000:7.2f} ms cum {s / 1000:6.2f} ms self  {name}")
        _timers(inst)
        _strace_hook(inst, lean)
        _strace_master(inst, lean)
    finally:
        _teardown(inst, backend)


def _timers(inst: Install) -> None:
    """Medians of the `TIMER <what> <ms> ms` lines a locally patched master logs (CONFABD_BENCH_PYTHONPATH)."""
    seen: dict[str, list[float]] = collections.defaultdict(list)
    for line in inst.master_log.read_text(errors="replace").splitlines():
        m = re.search(r"TIMER (.*?) ([0-9.]+) ms(?: cpu ([0-9.]+) ms)?$", line)
        if m:
            seen[m.group(1)].append(float(m.group(2)))
            if m.group(3):
                seen[m.group(1) + " (cpu)"].append(float(m.group(3)))
    for what, values in seen.items():
        log(f"master timer: {what}: median {median(values):.2f} ms (min {min(values):.2f}, n={len(values)})")


def _strace_hook(inst: Install, lean: str, n: int = 15) -> None:
    """The hook process's own phases (strace -tt, seccomp-filtered: untraced calls run untouched):
    execve -> connect (interpreter start + imports + reading the input), connect -> the reply's
    recv (the round trip: the master's work), recv -> exit."""
    if not shutil.which("strace"):
        return
    phases = collections.defaultdict(list)
    t = lambda s: sum(float(x) * m for x, m in zip(s.split(":"), (3600, 60, 1)))  # noqa: E731
    for i in range(n):
        sid = f"hpt-{i:03d}"
        inst.transcript(sid).write_bytes(FIXTURE.read_bytes())
        out = inst.root / "hook-strace.txt"
        r = run_timed(["strace", "--seccomp-bpf", "-f", "-tt", "-e", "trace=execve,connect,recvfrom,recvmsg,read,exit_group",
                       "-o", str(out), lean, "hook", "session-start"], env=inst.env,
                      stdin_bytes=inst.hook_input("SessionStart", sid))
        marks = {}
        for line in out.read_text().splitlines():
            parts = line.split(None, 2)
            if len(parts) < 3:
                continue
            when, call = t(parts[1]), parts[2]
            if call.startswith("execve(") and "exec" not in marks:
                marks["exec"] = when
            elif call.startswith("connect(") and "AF_UNIX" in call and "connect" not in marks:
                marks["connect"] = when
            elif call.startswith(("recvfrom(", "recvmsg(", "read(")) and "connect" in marks and "reply" not in marks:
                marks["reply"] = when
            elif call.startswith("exit_group("):
                marks["exit"] = when
        if len(marks) == 4:
            phases["execve -> connect"].append((marks["connect"] - marks["exec"]) * 1000)
            phases["connect -> reply"].append((marks["reply"] - marks["connect"]) * 1000)
            phases["reply -> exit"].append((marks["exit"] - marks["reply"]) * 1000)
    for what, values in phases.items():
        log(f"hook (strace --seccomp-bpf), new session: {what}: median {median(values):.2f} ms "
            f"(min {min(values):.2f}, n={len(values)})")
    if not phases:
        log(f"hook strace: no phases parsed: {out.read_text()[-1500:]}")


def _strace_master(inst: Install, lean: str, n: int = 15) -> None:
    """accept -> reply in the master (strace -tt -f), for new registrations and owned ones."""
    if not shutil.which("strace"):
        log("hook: strace not installed: no master-side timing")
        return
    out = Path(tempfile.mkdtemp(prefix="cfdb-strace-")) / "strace.txt"
    st = subprocess.Popen(["strace", "-tt", "-s", "160", "-e", "trace=accept4,accept,sendto,sendmsg,write,clone,clone3,fork,vfork",
                           "-o", str(out), "-p", str(inst.master_proc.pid)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    for i in range(n):
        _hook(inst, lean, "SessionStart", f"hps-{i:03d}")
        _hook(inst, lean, "UserPromptSubmit", f"hps-{i:03d}")
        time.sleep(0.3)
    time.sleep(0.5)
    st.terminate()
    st.wait()
    t = lambda s: sum(float(x) * m for x, m in zip(s.split(":"), (3600, 60, 1)))  # noqa: E731
    spans, fork_at = [], None
    open_at = None
    for line in out.read_text().splitlines():
        parts = line.split(None, 1)
        if len(parts) < 2 or ":" not in parts[0]:
            continue
        when, call = t(parts[0]), parts[1]
        if call.startswith("accept") and "= -1" not in call:
            open_at, fork_at = when, None
        elif call.startswith(("clone", "fork")) and open_at is not None:
            fork_at = when
        elif call.startswith("sendto(") and open_at is not None and "registered" in call:
            spans.append((bool(fork_at), (when - open_at) * 1000, ((fork_at - open_at) * 1000) if fork_at else None))
            open_at = None
    new = [s for s in spans if s[0]]
    old = [s for s in spans if not s[0]]
    if new:
        log(f"master (strace, inflated by tracing): accept -> reply, new session {median([s[1] for s in new]):.2f} ms "
            f"(accept -> clone {median([s[2] for s in new]):.2f} ms), owned session "
            f"{median([s[1] for s in old]) if old else float('nan'):.2f} ms; n={len(new)}/{len(old)}")
    else:
        log(f"master strace: no spans parsed; see {out}")


def _teardown(inst: Install, backend: Backend) -> None:
    if inst.master_proc is not None:  # the final syncs are not what is measured: kill the lot
        os.killpg(inst.master_proc.pid, signal.SIGKILL)
        inst.master_proc = None
    inst.close()
    backend.stop()


def _pyspy(pid: int, seconds: float, out: str) -> subprocess.Popen:
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PYTHON), "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--nonblocking",
                             "--duration", str(int(seconds)), "-o", out], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _report(path: str, label: str, top: int = 18) -> None:
    self_c, incl = collections.Counter(), collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            c = int(count)
            frames = [re.sub(r" \(/[^)]*/((?:confabd|python3\.\d+)/[^)]*)\)", r" (\1)", fr) for fr in stack.split(";")]
            total += c
            self_c[frames[-1]] += c
            for fr in {re.sub(r":\d+\)$", ")", fr) for fr in frames}:  # inclusive: per function, any line
                incl[fr] += c
    idle = sum(c for fr, c in self_c.items() if "select" in fr and "selectors" in fr)
    log(f"{label}: {total} samples ({idle} idle in select)")
    log("  inclusive (share of non-idle samples):")
    busy = max(1, total - idle)
    for fr, c in incl.most_common(top + 22):
        if "select (" in fr or fr.startswith("<module>") or "run (" in fr or "main (" in fr:
            continue
        log(f"    {c:6d} {100 * c / busy:5.1f} %  {fr}")
    log("  self:")
    for fr, c in self_c.most_common(top):
        log(f"    {c:6d} {100 * c / busy:5.1f} %  {fr}")


def _register(inst: Install, lean: str, sids: list[str]) -> float:
    for sid in sids:
        inst.transcript(sid).write_bytes(FIXTURE.read_bytes())
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        res = list(pool.map(lambda sid: run_timed([lean, "hook", "session-start"], env=inst.env,
                                                  stdin_bytes=inst.hook_input("SessionStart", sid)), sids))
    bad = [r for r in res if r[2]]
    if bad:
        raise RuntimeError(f"{len(bad)} hooks failed: {bad[0][4]!r}")
    return time.perf_counter() - t0


def many(n: int = 500, probe: int = 50) -> None:
    import psutil

    global KEEP
    KEEP = tempfile.mkdtemp(prefix="cfdb-pyspy-")  # the raw profiles are kept here
    log(f"py-spy raw profiles in {KEEP}")
    backend, inst, lean = _install("mprof", n + 2 * probe + 10)
    master = psutil.Process(inst.master_proc.pid)
    n_lines = FIXTURE.read_bytes().count(b"\n")
    try:
        done = 0
        for label, live in (("0 live", 0), (f"{n} live", n)):
            if live > done:
                sids = [f"mp-{i:04d}" for i in range(done, live)]
                _register(inst, lean, sids)
                done = live
                wait_until(lambda: all(backend.has_all(s, {f"{s}.jsonl": n_lines}) for s in sids), 600, 0.5,
                           "the first sync")
                time.sleep(3)
            # idle master first: what N live workers cost with nothing registering
            out = os.path.join(KEEP, f"idle-{live}.txt")
            cpu0 = sum(master.cpu_times()[:2])
            _pyspy(master.pid, 10, out).wait()
            log(f"master idle 10 s with {label}: CPU {sum(master.cpu_times()[:2]) - cpu0:.3f} s; "
                f"load {os.getloadavg()}")
            _report(out, f"idle master, {label}", top=8)
            sids = [f"mp-p{live}-{i:03d}" for i in range(probe)]
            out = os.path.join(KEEP, f"reg-{live}.txt")
            spy = _pyspy(master.pid, 60, out)
            time.sleep(1.0)
            cpu0 = sum(master.cpu_times()[:2])
            wall = _register(inst, lean, sids)
            cpu = sum(master.cpu_times()[:2]) - cpu0
            spy.send_signal(2)
            spy.wait()
            done_probe = sids
            log(f"registration of {probe} with {label}: {wall:.2f} s wall, master CPU {cpu * 1000 / probe:.2f} ms "
                f"per registration; load {os.getloadavg()}")
            _report(out, f"master during {probe} registrations, {label}")
            wait_until(lambda: all(backend.has_all(s, {f"{s}.jsonl": n_lines}) for s in done_probe), 600, 0.5,
                       "the probe's sync")
            done += 0
    finally:
        _teardown(inst, backend)


def compare(variants: list[str], rounds: int = 40) -> None:
    """Interleaved rounds: `python -I -S -c pass` and a new session's `hook session-start` against one
    master per confabd copy (`label=path`; `shipped` for this checkout), in a shuffled order per round."""
    import random

    rng = random.Random(15)
    masters = []
    try:
        for spec in variants:
            label, _, path = spec.partition("=")
            if path:
                os.environ["CONFABD_BENCH_PYTHONPATH"] = path
            else:
                os.environ.pop("CONFABD_BENCH_PYTHONPATH", None)
            masters.append((label, *_install(f"cmp{len(masters)}", rounds + 20)))
        os.environ.pop("CONFABD_BENCH_PYTHONPATH", None)
        base_env = python_pass_env()
        times: dict[str, list[float]] = collections.defaultdict(list)
        for i in range(rounds):
            jobs = [("pass", None)] + [(m[0], m) for m in masters]
            rng.shuffle(jobs)
            for label, m in jobs:
                if m is None:
                    times["pass"].append(run_timed([PYTHON, "-I", "-S", "-c", "pass"], env=base_env)[0])
                else:
                    times[label].append(_hook(m[2], m[3], "SessionStart", f"cmp-{i:03d}")[0])
                time.sleep(0.05)  # let a deferred fork finish before the next process starts
        b = times["pass"]
        log(f"compare ({rounds} interleaved rounds, load {os.getloadavg()}): python -I -S -c pass median "
            f"{median(b) * 1000:.1f} ms (min {min(b) * 1000:.1f})")
        for label, _, _, _ in masters:
            v = times[label]
            ratios = sorted(x / y for x, y in zip(v, b))
            log(f"  {label}: session-start median {median(v) * 1000:.1f} ms (min {min(v) * 1000:.1f}); "
                f"medians' ratio {median(v) / median(b):.2f}x, mins' ratio {min(v) / min(b):.2f}x, "
                f"per-round ratio min/median/max {ratios[0]:.2f} / {median(ratios):.2f} / {ratios[-1]:.2f}")
    finally:
        for _, backend, inst, _ in masters:
            _teardown(inst, backend)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "hook"
    if what in ("hook", "strace"):
        hook(strace_only=what == "strace")
    elif what == "compare":
        compare(sys.argv[2:])
    else:
        many(*(int(a) for a in sys.argv[2:4]))
