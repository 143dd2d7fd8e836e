"""The redaction's first pass over a whole batch of lines: Hyperscan, when it can be imported.

CPython's `re` scans for the default patterns' anchors at ~120 MB/s, the whole cost
of redaction on a backfill (bench/RESULTS.md). Hyperscan runs the same anchors, all
at once, over the joined lines at GB/s; only the lines it flags go through
`Redactor.redact_line`, which runs the exact `re` patterns (look-behinds, the private
key's back-reference: what Hyperscan cannot express) on those lines alone. An anchor
never matches across a newline (no literal holds one, and no tail can match one), so
a hit belongs to the line around it, and every line the `re` prefilter would stop
on is flagged: the output is the same, line for line (tests/test_redact_scan.py runs
both paths). Without Hyperscan installed `first_pass` is None and every line goes
through `redact_line`, exactly as before.

Each match is reported, not only the first of each pattern: `HS_FLAG_SINGLEMATCH`
would report a pattern once per scan, so once per batch, and miss later lines.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

try:  # optional at run time: confabd works (more slowly) without it
    import hyperscan
except ImportError:  # pragma: no cover - exercised by the fallback test in a process without it
    hyperscan = None

FirstPass = Callable[[bytes], list[int]]


def compile_first_pass(anchors: Iterable[tuple[str, str, bool]]) -> Optional[FirstPass]:
    """A function giving the end offsets of every anchor hit in a buffer, or None
    without Hyperscan. `anchors`: (literal, tail regex, caseless)."""
    if hyperscan is None:
        return None
    import re

    expressions, flags = [], []
    for literal, tail, caseless in dict.fromkeys(anchors):
        expressions.append((re.escape(literal) + tail).encode("ascii"))
        flags.append(hyperscan.HS_FLAG_CASELESS if caseless else 0)
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(expressions=expressions, ids=list(range(len(expressions))),
                     elements=len(expressions), flags=flags)
    scratch = hyperscan.Scratch(database)

    def hits(data: bytes) -> list[int]:
        ends: list[int] = []

        def on_match(_id, _start, end, _flags, _context):
            ends.append(end)
            return False  # keep scanning

        database.scan(data, match_event_handler=on_match, scratch=scratch)
        return ends

    return hits


def flagged_lines(lines: list[bytes], first_pass: FirstPass) -> list[int]:
    """Indexes of the `lines` that hold a hit of `first_pass`, in order, each once."""
    joined = b"\n".join(lines)
    flagged: list[int] = []
    index, position = 0, 0
    for end in sorted(first_pass(joined)):
        hit = end - 1  # the hit's last byte, inside its line
        index += joined.count(b"\n", position, hit)
        position = hit
        if not flagged or flagged[-1] != index:
            flagged.append(index)
    return flagged
