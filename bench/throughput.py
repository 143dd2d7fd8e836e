"""Backfill throughput (issue 6, row 5), and the test backend alone.

A 200 MB synthetic transcript is grown from the fixture transcripts: copy k
of each fixture gets its UUIDs renumbered (first 8 hex digits = k, so parent
links stay consistent) and its sessionId set to the synthetic session's.

- baseline: one Python process reads the same file and zstd-compresses it
  (level 3, as the HTTP sink) in 14 MiB pieces; its user+sys CPU (wait4).
- `confabctl save PATH` to the test backend on 127.0.0.1, redaction off and
  on (default patterns); the save process's user+sys CPU (wait4). The backend
  runs standalone in its own process (fresh for every save), so its CPU is
  never counted as the client's; it is reported next to it.
- backend alone: the same file, pre-encoded into the chunks a client sends,
  POSTed to a fresh backend over one keep-alive connection: its wall time and
  CPU show the backend is not what bounds the save.

A cProfile excerpt of the redaction-on save path (in-process, 1/10 of the
file) is attached to the figures.
"""

from __future__ import annotations

import cProfile
import http.client
import io
import json
import os
import pstats
import re
import time

import msgspec
import zstandard

from .common import (
    API_KEY, CONFABCTL, PYTHON, TRANSCRIPTS, Backend, Figure, Install, log, python_pass_env, run_rusage,
)

MB = 1_000_000
PIECE = 14 * 1024 * 1024
UUID_RE = re.compile(rb"[0-9a-f]{8}(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
SESSION_ID = "5a1e0000-0000-4000-8000-000000000200"

BASELINE_SCRIPT = """\
import sys, zstandard
c = zstandard.ZstdCompressor(level=3)
n = out = 0
with open(sys.argv[1], "rb", buffering=0) as f:
    while True:
        piece = f.read(14 * 1024 * 1024)
        if not piece:
            break
        n += len(piece)
        out += len(c.compress(piece))
print(n, out)
"""


def grow_transcript(path: str, size: int, session_id: str = SESSION_ID) -> tuple[int, int]:
    """Write a transcript of at least `size` bytes; return (bytes, lines)."""
    fixtures = [p.read_bytes() for p in sorted(TRANSCRIPTS.glob("*.jsonl"))]
    sid_re = re.compile(rb'"sessionId":"[^"]*"')
    sid = f'"sessionId":"{session_id}"'.encode()
    fixtures = [sid_re.sub(sid, f) for f in fixtures]
    written = lines = 0
    k = 0
    with open(path, "wb") as out:
        while written < size:
            prefix = b"%08x" % k
            for text in fixtures:
                data = UUID_RE.sub(lambda m: prefix + m.group(1), text)
                out.write(data)
                written += len(data)
                lines += data.count(b"\n")
            k += 1
    return written, lines


def _rusage_cpu(result) -> float:
    return result[1] + result[2]


def measure_baseline(path: str) -> tuple[float, float]:
    wall, user, sys_, rc, err = run_rusage([PYTHON, "-c", BASELINE_SCRIPT, path], env=python_pass_env())
    if rc:
        raise RuntimeError(f"baseline failed: {err!r}")
    return user + sys_, wall


def measure_save(path: str, lines: int, redaction: bool) -> dict:
    """One `confabctl save` to a fresh standalone backend; checks every line arrived."""
    backend = Backend()
    red = {"enabled": True, "use_default_patterns": True} if redaction else None
    inst = Install("save", backend, redaction=red)
    try:
        target = inst.transcript(SESSION_ID)
        os.link(path, target)  # same bytes, no copy
        cpu0 = backend.cpu()
        wall, user, sys_, rc, err = run_rusage([CONFABCTL, "save", str(target)], env=inst.env,
                                               stdout=__import__("subprocess").PIPE)
        if rc:
            raise RuntimeError(f"confabctl save failed rc={rc}: {err.decode(errors='replace')[-2000:]}")
        backend_cpu = backend.cpu() - cpu0
        status, body = backend.get("/_test/counts")
        chunks = body["by_path"].get("chunk", 0)
        got = backend.session(SESSION_ID)
        held = len(got["files"].get(f"{SESSION_ID}.jsonl", [])) if got else 0
        if held != lines:
            raise RuntimeError(f"backend holds {held} lines, the file has {lines}")
        return {"cpu": user + sys_, "user": user, "sys": sys_, "wall": wall, "backend_cpu": backend_cpu,
                "chunks": chunks}
    finally:
        inst.close()
        backend.stop()


def measure_backend_alone(path: str) -> dict:
    """POST pre-encoded chunks (what the client sends) to a fresh backend: its wall time and CPU."""
    from confabd.transcript import encoded_size

    data = open(path, "rb").read()
    lines = data.split(b"\n")[:-1]
    del data
    cctx = zstandard.ZstdCompressor(level=3)
    backend = Backend()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=120)
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json",
                   "User-Agent": "confabd/bench (linux; x86_64)"}

        def post(path_: str, body: bytes, extra=None):
            conn.request("POST", path_, body=body, headers={**headers, **(extra or {})})
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path_}: {resp.status} {payload[:300]!r}")
            return json.loads(payload)

        init = post("/api/v1/sync/init", msgspec.json.encode(
            {"external_id": SESSION_ID, "transcript_path": path, "metadata": {"cwd": "/tmp"}}))
        bodies, first, batch, used = [], 1, [], 0
        for line in lines + [None]:
            cost = encoded_size(line) if line is not None else 0
            if line is None or used + cost > PIECE:
                body = msgspec.json.encode({"session_id": init["session_id"], "file_name": f"{SESSION_ID}.jsonl",
                                            "file_type": "transcript", "first_line": first,
                                            "lines": [b.decode("utf-8", "replace") for b in batch]})
                bodies.append(cctx.compress(body))
                first += len(batch)
                batch, used = [], 0
            if line is not None:
                batch.append(line)
                used += cost
        cpu0 = backend.cpu()
        t0 = time.perf_counter()
        for body in bodies:
            post("/api/v1/sync/chunk", body, {"Content-Encoding": "zstd"})
        wall = time.perf_counter() - t0
        conn.close()
        return {"wall": wall, "cpu": backend.cpu() - cpu0, "chunks": len(bodies)}
    finally:
        backend.stop()


def profile_save(path: str, size: int, redaction: bool = True, top: int = 14) -> list[str]:
    """cProfile of `run_save` in this process over the first `size` bytes of the transcript."""
    from confabd.config import load_settings
    from confabd.save import run_save

    backend = Backend()
    red = {"enabled": True, "use_default_patterns": True} if redaction else None
    inst = Install("prof", backend, redaction=red)
    try:
        target = inst.transcript(SESSION_ID)
        with open(path, "rb") as src, open(target, "wb") as dst:
            piece = src.read(size)
            dst.write(piece[: piece.rfind(b"\n") + 1])
        old = dict(os.environ)
        os.environ.update(inst.env)
        try:
            prof = cProfile.Profile(time.process_time)  # CPU time: waits on the backend are not the client's cost
            out = io.StringIO()
            prof.enable()
            rc = run_save(str(target), str(inst.home), load_settings(None), progress=False, out=out, err=out)
            prof.disable()
        finally:
            os.environ.clear()
            os.environ.update(old)
        stream = io.StringIO()
        pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(top)
        text = stream.getvalue().splitlines()
        start = next(i for i, l in enumerate(text) if l.strip().startswith("ncalls"))
        header = f"cProfile (CPU time, sorted by tottime) of the save path, redaction {'on' if redaction else 'off'}, " \
                 f"{size / MB:.0f} MB, rc={rc}:"
        return [header] + ["    " + l for l in text[start:start + top + 1] if l.strip()]
    finally:
        inst.close()
        backend.stop()


def run(quick: bool = False) -> list[Figure]:
    size = 20 * MB if quick else 200 * MB
    repeats = 1 if quick else 2
    workdir = Install("grow", None)
    figures: list[Figure] = []
    try:
        path = str(workdir.root / "synthetic.jsonl")
        t0 = time.perf_counter()
        nbytes, nlines = grow_transcript(path, size)
        log(f"grew {nbytes / MB:.0f} MB, {nlines} lines in {time.perf_counter() - t0:.1f} s")
        base = [measure_baseline(path) for _ in range(repeats + 1)]
        b_cpu = min(c for c, _ in base)
        log(f"baseline (read + zstd in 14 MiB pieces): cpu {[round(c, 2) for c, _ in base]} s")
        alone = measure_backend_alone(path)
        log(f"backend alone: {alone}")
        results = {}
        for redaction in (False, True):
            runs = [measure_save(path, nlines, redaction) for _ in range(repeats)]
            log(f"save redaction={'on' if redaction else 'off'}: "
                f"{[(round(r['cpu'], 2), round(r['wall'], 2)) for r in runs]}")
            results[redaction] = runs
        for redaction, limit in ((False, 2.0), (True, 4.0)):
            runs = results[redaction]
            cpu = min(r["cpu"] for r in runs)
            best = min(runs, key=lambda r: r["cpu"])
            fig = Figure(f"backfill: save {nbytes / MB:.0f} MB, redaction {'on' if redaction else 'off'} "
                         f"(client CPU)", cpu, "s", b_cpu, "read + zstd 14 MiB pieces, CPU",
                         f"<= {limit:.0f}x baseline", cpu <= limit * b_cpu,
                         spread=(f"client CPU per run {[round(r['cpu'], 2) for r in runs]} s "
                                 f"(user {best['user']:.2f} + sys {best['sys']:.2f}); wall "
                                 f"{[round(r['wall'], 2) for r in runs]} s = "
                                 f"{nbytes / MB / min(r['wall'] for r in runs):.0f} MB/s; "
                                 f"{best['chunks']} chunks; backend CPU meanwhile {best['backend_cpu']:.2f} s; "
                                 f"baseline CPU per run {[round(c, 2) for c, _ in base]} s"))
            figures.append(fig)
        fastest_save = min(r["wall"] for rs in results.values() for r in rs)
        figures.append(Figure("test backend alone: ingest the same chunks (wall)", alone["wall"], "s",
                              fastest_save, "fastest save, wall", "well under the save's wall time",
                              alone["wall"] < 0.5 * fastest_save,
                              spread=f"{alone['chunks']} chunks, backend CPU {alone['cpu']:.2f} s, "
                                     f"{nbytes / MB / alone['wall']:.0f} MB/s"))
        prof_size = max(size // 10, 20 * MB) if not quick else 10 * MB
        figures[1].notes.extend(profile_save(path, prof_size, redaction=True))
        figures[0].notes.extend(profile_save(path, prof_size, redaction=False))
    finally:
        workdir.close()
    return figures
