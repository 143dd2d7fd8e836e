"""Hook latency and session-end latency (issue 6, rows 1 and 2).

hook latency: the whole `confabctl hook session-start` process (the entry
script Claude Code runs — the lean form that the packages install as
/usr/bin/confabctl and packaging/install-user.sh writes, see LEAN_SCRIPT —
with fixture hook input on stdin) against a running master,
median of >= 30 runs, interleaved with the baseline `python -c pass` (same
interpreter) so that machine noise hits both alike. The `-X importtime` top
entries of the hook path are printed with it.

session-end latency: for sessions that are syncing (30 s default interval),
lines are appended, then `confabctl hook session-end` runs: its whole process
time (vs the baseline), then the time from its return until the backend holds
every line and the `session_end` event.
"""

from __future__ import annotations

import time

from .common import (
    CONFABCTL, PYTHON, Backend, Figure, Install, TRANSCRIPTS, log, median, python_pass_env, run_timed,
    small_lines, spread, wait_until,
)

SESSION_FILE = "hello-world-script.jsonl"
# As packaging/bin/confabctl and install-user.sh write it: -I -S, the venv's packages put on
# the path by the script (here also the checkout, which the dev venv's editable .pth would add).
LEAN_SCRIPT = """#!{python} -IS
import sys
sys.path.append({site!r})
sys.path.append({repo!r})
from confabd.ctl import main
sys.exit(main())
"""


def lean_script_text() -> str:
    import sysconfig
    from pathlib import Path

    return LEAN_SCRIPT.format(python=PYTHON, site=sysconfig.get_paths()["purelib"],
                              repo=str(Path(__file__).resolve().parent.parent))


def ratio_spread(values: list[float], baselines: list[float]) -> str:
    """min / median / max of the per-round ratios (each run against the baseline run next to it)."""
    ratios = sorted(v / b for v, b in zip(values, baselines))
    return f"{ratios[0]:.2f} / {median(ratios):.2f} / {ratios[-1]:.2f}"


def importtime_report(inst: Install, external_id: str, top: int = 12) -> list[str]:
    """`python -X importtime` of the hook path: total and the top entries by cumulative time."""
    out = []
    for label, argv in (("console script", [PYTHON, "-X", "importtime", CONFABCTL, "hook", "session-start"]),
                        ("python -m confabd.ctl", [PYTHON, "-X", "importtime", "-m", "confabd.ctl", "hook",
                                                   "session-start"])):
        rows = []
        for _ in range(3):  # keep the fastest of 3 (less noise)
            _, _, _, _, err = run_timed(argv, env=inst.env, stdin_bytes=inst.hook_input("SessionStart", external_id))
            parsed = []
            for line in err.decode(errors="replace").splitlines():
                if not line.startswith("import time:") or "cumulative" in line:
                    continue
                _, rest = line.split(":", 1)
                self_us, cum_us, name = (p.strip() for p in rest.split("|", 2))
                parsed.append((int(cum_us), int(self_us), name))
            if not rows or sum(p[1] for p in parsed) < sum(p[1] for p in rows):
                rows = parsed
        total_self = sum(r[1] for r in rows)
        out.append(f"-X importtime, {label}: {len(rows)} modules, {total_self / 1000:.1f} ms self total; "
                   f"top {top} by cumulative:")
        for cum, self_us, name in sorted(rows, reverse=True)[:top]:
            out.append(f"    {cum / 1000:7.2f} ms cum {self_us / 1000:6.2f} ms self  {name}")
    return out


def run(quick: bool = False) -> list[Figure]:
    runs = 10 if quick else 40
    end_runs = 4 if quick else 12
    backend = Backend()
    inst = Install("hook", backend)
    figures: list[Figure] = []
    try:
        inst.start_master()
        base_env = python_pass_env()
        fixture = (TRANSCRIPTS / SESSION_FILE).read_bytes()
        n_fixture = fixture.count(b"\n")

        # warm the page cache and the master's code paths
        for i in range(3):
            sid = f"warm-{i}"
            inst.transcript(sid).write_bytes(fixture)
            run_timed([PYTHON, "-c", "pass"], env=base_env)
            run_timed([CONFABCTL, "hook", "session-start"], env=inst.env,
                      stdin_bytes=inst.hook_input("SessionStart", sid))

        # The entry script that ships (packaging/bin/confabctl, install-user.sh): pip's
        # generated console script imports `re` (and enum, functools, ...) first, so it
        # is measured too, as information about a development venv.
        lean = inst.root / "bin" / "confabctl-lean"
        lean.parent.mkdir(exist_ok=True)
        lean.write_text(lean_script_text())
        lean.chmod(0o755)
        log(f"hook latency: {runs} x (python -c pass, python -I -S -c pass, confabctl hook session-start, "
            f"lean script, user-prompt-submit, pre-tool-use, post-tool-use), interleaved")
        base, base_is, hook, hook_m, hook_lean, prompt, pre_tool, post_tool = [], [], [], [], [], [], [], []
        sids = []
        for i in range(runs):
            sid = f"hook-{i:03d}"
            sids.append(sid)
            for s in (sid, sid + "-lean"):
                inst.transcript(s).write_bytes(fixture)
            payload = inst.hook_input("SessionStart", sid)
            base.append(run_timed([PYTHON, "-c", "pass"], env=base_env)[0])
            wall, _, rc, out, err = run_timed([CONFABCTL, "hook", "session-start"], env=inst.env, stdin_bytes=payload)
            if rc != 0 or err.strip():
                raise RuntimeError(f"hook session-start failed: rc={rc} {err!r}")
            hook.append(wall)
            # a worker is forked and syncs now: let it settle, out of the next measurement
            time.sleep(0.15)
            wall, _, rc, out, err = run_timed([str(lean), "hook", "session-start"], env=inst.env,
                                              stdin_bytes=inst.hook_input("SessionStart", sid + "-lean"))
            if rc != 0 or err.strip():
                raise RuntimeError(f"lean hook session-start failed: rc={rc} {err!r}")
            hook_lean.append(wall)
            time.sleep(0.15)
            base_is.append(run_timed([PYTHON, "-I", "-S", "-c", "pass"], env=base_env)[0])
            # UserPromptSubmit on a session a worker already owns: what every prompt costs
            wall, _, rc, out, err = run_timed([str(lean), "hook", "user-prompt-submit"], env=inst.env,
                                              stdin_bytes=inst.hook_input("UserPromptSubmit", sid + "-lean"))
            if rc != 0 or err.strip() or b'"continue": true' not in out:
                raise RuntimeError(f"hook user-prompt-submit failed: rc={rc} {out!r} {err!r}")
            prompt.append(wall)
            # PreToolUse and PostToolUse of a Bash call (commit and PR links): before and after every one
            for event, times in (("PreToolUse", pre_tool), ("PostToolUse", post_tool)):
                name = "pre-tool-use" if event == "PreToolUse" else "post-tool-use"
                wall, _, rc, out, err = run_timed([str(lean), "hook", name], env=inst.env,
                                                  stdin_bytes=inst.hook_input(event, sid + "-lean"))
                if rc != 0 or err.strip() or out.strip():
                    raise RuntimeError(f"hook {name} failed: rc={rc} {out!r} {err!r}")
                times.append(wall)
            if i % 4 == 0:  # the `python -m` form too, for comparison (re-register: "already registered")
                hook_m.append(run_timed([PYTHON, "-m", "confabd.ctl", "hook", "session-start"], env=inst.env,
                                        stdin_bytes=payload)[0])
        b, h, bis = median(base), median(hook_lean), median(base_is)
        figures.append(Figure("hook latency (session-start, shipped entry script) vs python -I -S", h, "s", bis,
                              "python -I -S -c pass (median)", "<= 1.5x baseline", h <= 1.5 * bis,
                              spread=f"hook {spread(hook_lean)}; baseline {spread(base_is)}; "
                                     f"per-round ratios {ratio_spread(hook_lean, base_is)}"))
        p = median(prompt)
        figures.append(Figure("hook latency (user-prompt-submit, session already owned) vs python -I -S", p, "s",
                              bis, "python -I -S -c pass (median)", "<= 1.5x baseline", p <= 1.5 * bis,
                              spread=f"hook {spread(prompt)}; per-round ratios {ratio_spread(prompt, base_is)}"))
        for label, times in (("pre-tool-use", pre_tool), ("post-tool-use", post_tool)):
            t = median(times)
            figures.append(Figure(f"hook latency ({label}, a Bash call) vs python -I -S", t, "s", bis,
                                  "python -I -S -c pass (median)", "<= 1.5x baseline", t <= 1.5 * bis,
                                  spread=f"hook {spread(times)}; per-round ratios {ratio_spread(times, base_is)}"))
        fig = Figure("hook latency (session-start, whole process, shipped entry script)", h, "s", b,
                     "python -c pass (median)", "<= 2.0x baseline", h <= 2.0 * b,
                     spread=f"hook {spread(hook_lean)}; baseline {spread(base)}; script: {LEAN_SCRIPT.splitlines()[:2]}")
        fig.notes.append(f"`python -m confabd.ctl hook session-start` (re-registering a known session): "
                         f"median {median(hook_m) * 1000:.1f} ms ({spread(hook_m)})")
        fig.notes.extend(importtime_report(inst, sids[0]))
        figures.append(fig)
        hp = median(hook)
        figures.append(Figure("hook latency via pip's console script (development venv only)", hp, "s",
                              b, "python -c pass (median)", "<= 2.0x baseline", None, spread=spread(hook)))

        log("session-end: waiting until every hook session is synced")
        wait_until(lambda: all(backend.has_all(s, {f"{s}.jsonl": n_fixture}) for s in sids), 60, 0.1,
                   "the initial sync of the hook sessions")
        log(f"session-end latency: {end_runs} sessions")
        end_base, end_hook, delivered = [], [], []
        for i, sid in enumerate(sids[:end_runs]):
            extra = small_lines(25, f"{sid}-end")
            with open(inst.transcript(sid), "ab") as f:
                f.write(extra)
            total = n_fixture + 25
            payload = inst.hook_input("SessionEnd", sid)
            end_base.append(run_timed([PYTHON, "-c", "pass"], env=base_env)[0])
            wall, _, rc, out, err = run_timed([str(lean), "hook", "session-end"], env=inst.env, stdin_bytes=payload)
            returned = time.perf_counter()
            if rc != 0 or err.strip():
                raise RuntimeError(f"hook session-end failed: rc={rc} {err!r}")
            wait_until(lambda: backend.has_all(sid, {f"{sid}.jsonl": total}, event=True), 30, 0.005,
                       f"{sid} delivered with its session_end")
            delivered.append(time.perf_counter() - returned)
            end_hook.append(wall)
            time.sleep(0.2)
        b2, h2 = median(end_base), median(end_hook)
        figures.append(Figure("session-end hook returns", h2, "s", b2, "python -c pass (median)",
                              "<= 2.0x baseline", h2 <= 2.0 * b2,
                              spread=f"hook {spread(end_hook)}; baseline {spread(end_base)}"))
        d = median(delivered)
        figures.append(Figure("session-end: hook return -> all lines + session_end on backend", d, "s", b2,
                              "python -c pass (median)", "<= 1 s median", d <= 1.0, spread=spread(delivered)))
        errors = inst.master_errors()
        if errors:
            figures[-1].notes.append(f"master log errors: {errors[:3]}")
    finally:
        inst.close()
        backend.stop()
    return figures
