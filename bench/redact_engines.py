"""Redaction first-pass engines on the bench corpus (issue 15 item 3): which tool, by measurement.

    .venv/bin/python -m bench.redact_engines [MB]            # default 30 MB of each corpus file
    .venv/bin/python -m bench.redact_engines --custom [MB]   # with CUSTOM_PATTERNS configured too

Each engine finds the lines that may hold a secret in 1 MiB line-aligned blocks of the corpus
(bench/corpus.py, clean and 1 % secrets), and those lines go through `Redactor.redact_line`;
the output must equal `redact_line` over every line (the `re` path), else the engine is
reported wrong. MB/s of CPU time (process_time), best of 3 interleaved rounds; the baseline
is zstd -3 of the same blocks in the same round. Engines: the shipped `re` path line by line,
the `re` prefilter over whole blocks, Hyperscan (confabd/redact_scan.py, what ships), and
google-re2 (the anchors as one regex, `finditer` per block) when installed.

`--custom`: the default patterns plus CUSTOM_PATTERNS (among them a look-behind and a
back-reference, which Hyperscan has no syntax for): `re` line by line, as every line
went before, against the first pass (redact_superset.py turns each into a Hyperscan
pattern that matches at least as much).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import zstandard

from confabd import redact
from confabd.redact import Redactor
from confabd.redact_scan import flagged_lines

from .common import TRANSCRIPTS, Figure, log
from .corpus import write_corpus

BLOCK = 1 << 20


def blocks_of(data: bytes) -> list[tuple[list[bytes], bytes]]:
    out, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + BLOCK) + 1 or data.find(b"\n", start) + 1
        block = data[start:end]
        out.append((block.split(b"\n")[:-1], block))
        start = end
    return out


# A few custom patterns of the kinds users write: a ticket id, a caseless internal host,
# an account id with look-arounds, a quoted token with a back-reference.
CUSTOM_PATTERNS = [
    {"name": "ticket", "pattern": r"TICKET-\d{4,}"},
    {"name": "internal host", "pattern": r"(?i)\binternal\.example\.com/[\w/-]+"},
    {"name": "account", "pattern": r"(?<![\w-])acct_[0-9a-f]{12}(?![\w-])"},
    {"name": "quoted token", "pattern": r"(['\"])tok=([^'\"]+)\1", "capture_group": 2},
]


def custom_engines():
    r = Redactor.from_config({"enabled": True, "patterns": CUSTOM_PATTERNS})
    found = {"re, line by line (custom: every line before)": lambda lines, block: [r.redact_line(x) for x in lines]}
    if redact._custom_first_pass(True, [rule.regex for rule in r._custom_rules]) is not None:
        found["hyperscan first pass with the custom patterns"] = r.redact_lines
    return r, found


def engines():
    r = Redactor.from_config({"enabled": True})
    anchors = [(lit, tail, s.ignore_case_anchors) for s in redact.DEFAULT_PATTERNS for lit, tail in s.anchors]
    found = {}

    def per_line(lines, block):
        return [r.redact_line(line) for line in lines]

    def re_blocks(lines, block):
        out = list(lines)
        hits = [m.end() for m in redact._DEFAULT_PREFILTER.finditer(block)]
        for i in flagged_lines(lines, lambda _data: hits, block):
            out[i] = r.redact_line(lines[i])
        return out

    found["re, line by line (the fallback)"] = per_line
    found["re prefilter over whole blocks"] = re_blocks
    if redact._default_first_pass() is not None:
        found["hyperscan first pass (shipped)"] = r.redact_lines
    try:
        import re as stdre

        import re2
    except ImportError:
        re2 = None
    if re2 is not None:
        alternation = "|".join(
            (f"(?i:{stdre.escape(lit)}{tail})" if caseless else f"{stdre.escape(lit)}{tail}")
            for lit, tail, caseless in dict.fromkeys(anchors))
        compiled = re2.compile(alternation.encode())

        def re2_blocks(lines, block):
            out = list(lines)
            hits = [m.end() for m in compiled.finditer(block)]
            for i in flagged_lines(lines, lambda _data: hits, block):
                out[i] = r.redact_line(lines[i])
            return out

        found["google-re2, anchors as one regex"] = re2_blocks
    return r, found


def measure(size: int, custom: bool) -> tuple[list[str], dict[tuple[str, str], float]]:
    """(engine names, zstd first; best MB/s per (file, engine)), every engine's output checked first."""
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, share in (("clean", 0.0), ("1% secrets", 0.01)):
            path = os.path.join(tmp, name.replace("% ", "pct-") + ".jsonl")
            write_corpus(path, size, TRANSCRIPTS, secret_share=share)
            files[name] = blocks_of(open(path, "rb").read())
    r, found = custom_engines() if custom else engines()
    compressor = zstandard.ZstdCompressor(level=3)
    best: dict[tuple[str, str], float] = {}
    for name, blocks in files.items():
        expected = [[r.redact_line(line) for line in lines] for lines, _ in blocks]
        for engine, fn in found.items():
            assert [fn(lines, block) for lines, block in blocks] == expected, f"{engine} differs on {name}"
    for _ in range(3):
        for name, blocks in files.items():
            total = sum(len(b) for _, b in blocks)
            t = time.process_time()
            for _, block in blocks:
                compressor.compress(block)
            best[(name, "zstd -3 (baseline)")] = max(best.get((name, "zstd -3 (baseline)"), 0),
                                                     total / (time.process_time() - t) / 1e6)
            for engine, fn in found.items():
                t = time.process_time()
                for lines, block in blocks:
                    fn(lines, block)
                rate = total / (time.process_time() - t) / 1e6
                best[(name, engine)] = max(best.get((name, engine), 0), rate)
    return ["zstd -3 (baseline)"] + list(found), best


def run(quick: bool = False) -> list[Figure]:
    """bench/run.py's `redaction` group: every engine, default patterns and with CUSTOM_PATTERNS."""
    size = 10_000_000 if quick else 30_000_000
    figures = []
    for custom in (False, True):
        log(f"redaction engines, {size / 1e6:.0f} MB per file{', custom patterns too' if custom else ''}")
        names, best = measure(size, custom)
        base = best[("clean", names[0])]
        for engine in names[1:]:
            label = f"redaction{' (defaults + custom)' if custom else ''}: {engine}, MB/s CPU, clean"
            figures.append(Figure(label, best[("clean", engine)], "MB/s", base, "zstd -3 of the same blocks",
                                  "info", None, spread=f"1 % secrets: {best[('1% secrets', engine)]:,.0f} MB/s "
                                  f"(zstd {best[('1% secrets', names[0])]:,.0f}); best of 3, output checked identical"))
    return figures


def main(argv: list[str]) -> int:
    custom = "--custom" in argv
    argv = [arg for arg in argv if arg != "--custom"]
    size = int(float(argv[0]) * 1e6) if argv else 30_000_000
    names, best = measure(size, custom)
    print(f"| engine ({size / 1e6:.0f} MB per file, output checked identical) | MB/s clean | MB/s 1 % secrets |")
    print("|---|---|---|")
    for engine in names:
        print(f"| {engine} | {best[('clean', engine)]:,.0f} | {best[('1% secrets', engine)]:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
