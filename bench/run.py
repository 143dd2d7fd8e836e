"""confabd benchmarks (issue 6): one command, every figure, each against a baseline of the same run.

    .venv/bin/python bench/run.py            # everything (~6 min on 2 cores, plus the backfill group's rounds)
    .venv/bin/python bench/run.py --quick    # short smoke run (smaller samples, 20 MB backfill, 15 s idle)
    .venv/bin/python bench/run.py --only hook   # one group: hook, lifecycle, backfill, throughput, memory, scale,
                                                #   scale-many, redaction
    .venv/bin/python bench/run.py --only backfill --quick   # the honest backfill bench at 30 MB

`backfill` (bench/backfill.py) is the backfill figure: `confabctl save` against
the floor client (bench/floor_client.py) over a corpus that does not repeat,
interleaved rounds. `throughput` is the older bench (repeated corpus, read+zstd
baseline, not interleaved), kept so earlier results can be reproduced.

Every process it starts is stopped at the end (also on Ctrl-C), every
installation lives in a temp dir that is removed, only 127.0.0.1 is used.
Progress goes to stderr; the table goes to stdout (and `--markdown FILE`).
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import common  # noqa: E402
from bench.common import Figure, fmt  # noqa: E402

GROUPS = {
    "hook": ("bench.hook_latency", "hook latency, session-end latency"),
    "lifecycle": ("bench.lifecycle", "parent-exit latency, restart latency"),
    "backfill": ("bench.backfill", "backfill vs the honest floor client, interleaved rounds (issue 15)"),
    "throughput": ("bench.throughput", "older backfill bench (repeated corpus, read+zstd baseline), backend alone"),
    "memory": ("bench.memory", "memory per session, idle cost (100 sessions)"),
    "scale": ("bench.scale", "200 sessions through the hook command"),
    "scale-many": ("bench.scale_many", "100 to 1,000 concurrent sessions: memory, registration, status (issue 15)"),
    "redaction": ("bench.redact_engines", "redaction first-pass engines, default and custom patterns (issue 15)"),
}


def machine() -> str:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kb = 0
    return (f"{os.cpu_count()} CPUs ({model}), {mem_kb / 1024 / 1024:.1f} GiB RAM, "
            f"Python {platform.python_version()} ({sys.executable}), {platform.system()} {platform.release()}")


def table(figures: list[Figure]) -> str:
    rows = ["| figure | value | baseline (same run) | ratio | target | result |", "|---|---|---|---|---|---|"]
    for f in figures:
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        rows.append(f"| {f.name} | {fmt(f.value, f.unit)} | {fmt(f.baseline, f.unit if f.unit != '%' else 's')}"
                    f"{' (' + f.baseline_what + ')' if f.baseline_what else ''} | {ratio} | {f.target} | "
                    f"{f.verdict()} |")
    return "\n".join(rows)


def details(figures: list[Figure]) -> str:
    out = []
    for f in figures:
        lines = [n for n in f.notes if n]
        if not f.spread and not lines:
            continue
        out.append(f"- **{f.name}**" + (f": {f.spread}" if f.spread else ""))
        out.extend(f"    {n}" for n in lines)
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke run (backfill: 30 MB, 5 rounds)")
    parser.add_argument("--only", action="append", choices=sorted(GROUPS), help="run only this group (repeatable)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table and details here")
    args = parser.parse_args(argv)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(common.PROCS.stop_all)  # whatever happens, nothing we started outlives us
    names = args.only or list(GROUPS)
    figures: list[Figure] = []
    failed = []
    started = time.monotonic()
    print(f"machine: {machine()}", flush=True)
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}", flush=True)
    try:
        for name in names:
            module_name, what = GROUPS[name]
            print(f"== {name}: {what}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                module = __import__(module_name, fromlist=["run"])
                got = module.run(quick=args.quick)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one group failing must not hide the others
                traceback.print_exc()
                failed.append(name)
                got = [Figure(f"{name}: benchmark error", float("nan"), "", None, "", "runs", False,
                              notes=[f"{type(exc).__name__}: {exc}"])]
            finally:
                common.PROCS.stop_all()
            figures.extend(got)
            print(f"   {name} took {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; stopping every process started", file=sys.stderr)
        common.PROCS.stop_all()
        return 130
    text = table(figures) + "\n\n" + details(figures)
    print()
    print(text)
    print(f"\n{sum(f.passed is True for f in figures)} PASS, {sum(f.passed is False for f in figures)} MISS; "
          f"took {time.monotonic() - started:.0f} s")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
