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


def compile_first_pass(anchors: Iterable[tuple[str, str, bool]], cache_dir: str = "") -> Optional[FirstPass]:
    """A function giving the end offsets of every anchor hit in a buffer, or None
    without Hyperscan. `anchors`: (literal, tail regex, caseless).

    Compiling the default anchors costs ~40 ms of CPU (the tails' character
    classes), loading a compiled database 0.03 ms: it is kept in `cache_dir`
    (a private file named by the hash of the patterns, flags and Hyperscan
    version; Hyperscan checks a database's version, platform and checksum when
    it loads one, and a file that fails is compiled again and replaced)."""
    if hyperscan is None:
        return None
    import re

    expressions, flags = [], []
    for literal, tail, caseless in dict.fromkeys(anchors):
        expressions.append((re.escape(literal) + tail).encode("ascii"))
        flags.append(hyperscan.HS_FLAG_CASELESS if caseless else 0)
    database = _cached_database(expressions, flags, cache_dir)
    scratch = hyperscan.Scratch(database)

    def hits(data: bytes) -> list[int]:
        ends: list[int] = []

        def on_match(_id, _start, end, _flags, _context):
            ends.append(end)
            return False  # keep scanning

        database.scan(data, match_event_handler=on_match, scratch=scratch)
        return ends

    return hits


def _compile(expressions: list[bytes], flags: list[int]):
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(expressions=expressions, ids=list(range(len(expressions))),
                     elements=len(expressions), flags=flags)
    return database


def _cached_database(expressions: list[bytes], flags: list[int], cache_dir: str):
    if not cache_dir:
        return _compile(expressions, flags)
    import hashlib
    import os

    from .fileio import atomic_write, ensure_private_dir, read_private_file

    key = hashlib.sha256(repr((getattr(hyperscan, "__version__", ""), os.uname().machine,
                               expressions, flags)).encode()).hexdigest()[:32]
    path = os.path.join(cache_dir, f"redact-{key}.hsdb")
    try:
        return hyperscan.loadb(read_private_file(path), hyperscan.HS_MODE_BLOCK)
    except (OSError, hyperscan.HyperscanError):
        pass
    database = _compile(expressions, flags)
    try:
        atomic_write(os.path.join(ensure_private_dir(cache_dir), os.path.basename(path)), hyperscan.dumpb(database))
    except OSError:
        pass  # a cache only: a read-only or full disk costs the compile next time
    return database


def flagged_lines(lines: list[bytes], first_pass: FirstPass, joined: Optional[bytes] = None) -> list[int]:
    """Indexes of the `lines` that hold a hit of `first_pass`, in order, each once.
    `joined`: the lines joined by newlines (a trailing one or not), when at hand."""
    joined = b"\n".join(lines) if joined is None else joined
    flagged: list[int] = []
    index, position = 0, 0
    for end in sorted(first_pass(joined)):
        hit = end - 1  # the hit's last byte, inside its line
        index += joined.count(b"\n", position, hit)
        position = hit
        if not flagged or flagged[-1] != index:
            flagged.append(index)
    return flagged
