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

Custom patterns (`compile_custom_first_pass`) join the same database as the byte
patterns redact_superset.py derives from them (each matches at least where the
user's `str` pattern matches on a line, never across a newline); one Hyperscan
cannot compile even in its prefilter mode (HS_FLAG_PREFILTER: a looser pattern
for one too large to build as is) is left to `re`, searched on every line, as
`Redactor` did for all of them before.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Optional

from .redact_superset import superset_pattern

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
    expressions, flags = _anchor_expressions(anchors)
    return _scanner(_cached_database(expressions, flags, cache_dir))


def compile_custom_first_pass(anchors: Iterable[tuple[str, str, bool]], patterns: list[re.Pattern[str]],
                              cache_dir: str = "") -> Optional[tuple[FirstPass, list[int]]]:
    """The first pass over `anchors` and the custom value `patterns` (compiled `str`
    regexes), and the indexes of the patterns it leaves to `re` on every line; None
    without Hyperscan. Which patterns compile is found by compiling each alone, on
    the first use only: the database file holds the answer with it."""
    if hyperscan is None:
        return None
    anchor_expressions, anchor_flags = _anchor_expressions(anchors)
    expressions, flags = anchor_expressions, anchor_flags
    candidates = [superset_pattern(pattern) for pattern in patterns]
    key = (expressions, flags, candidates)
    cached = _load(cache_dir, key)
    if cached is None:
        left_to_re: list[int] = []
        for index, candidate in enumerate(candidates):
            flag = _compilable_flags(candidate)
            if flag is None:
                left_to_re.append(index)
            else:
                expressions, flags = expressions + [candidate], flags + [flag]
        try:
            database = _compile(expressions, flags) if expressions else None
        except hyperscan.error:  # each compiles alone, not all together: the anchors only
            left_to_re = list(range(len(candidates)))
            database = _compile(anchor_expressions, anchor_flags) if anchor_expressions else None
        cached = database, left_to_re
        _save(cache_dir, key, database, left_to_re)
    database, left_to_re = cached
    return (_scanner(database) if database is not None else (lambda _data: [])), left_to_re


def _anchor_expressions(anchors: Iterable[tuple[str, str, bool]]) -> tuple[list[bytes], list[int]]:
    expressions, flags = [], []
    for literal, tail, caseless in dict.fromkeys(anchors):
        expressions.append((re.escape(literal) + tail).encode("ascii"))
        flags.append(hyperscan.HS_FLAG_CASELESS if caseless else 0)
    return expressions, flags


def _compilable_flags(candidate: Optional[bytes]) -> Optional[int]:
    """The flags a candidate compiles with on its own (exact, else as a prefilter), or
    None: no candidate, one that can match empty (then so can the user's pattern; an
    empty hit has no last byte to name its line by), or too large even as a prefilter.
    (A candidate is Python syntax too, and its only zero-width items are `^` and `$`,
    which hold on b"": it can match empty somewhere if and only if it matches b"".)"""
    try:
        if not candidate or re.compile(candidate).fullmatch(b"") is not None:
            return None
    except re.error:
        return None
    for flag in (hyperscan.HS_FLAG_MULTILINE, hyperscan.HS_FLAG_MULTILINE | hyperscan.HS_FLAG_PREFILTER):
        try:
            _compile([candidate], [flag])
            return flag
        except hyperscan.error:
            continue
    return None


def _scanner(database) -> FirstPass:
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


def _cache_path(cache_dir: str, key, prefix: str = "redact") -> str:
    import hashlib
    import os

    digest = hashlib.sha256(repr((getattr(hyperscan, "__version__", ""), os.uname().machine,
                                  key)).encode()).hexdigest()[:32]
    return os.path.join(cache_dir, f"{prefix}-{digest}.hsdb")


def _load(cache_dir: str, key):
    """(database or None, indexes left to `re`) saved by `_save` under `key`, or None."""
    if not cache_dir:
        return None
    from .fileio import read_private_file

    try:
        data = read_private_file(_cache_path(cache_dir, key, "redact-custom"))
        header, _, body = data.partition(b"\n")
        left_to_re = [int(i) for i in header.decode("ascii").split(",") if i]
        return (hyperscan.loadb(body, hyperscan.HS_MODE_BLOCK) if body else None), left_to_re
    except (OSError, ValueError, UnicodeDecodeError, hyperscan.HyperscanError):
        return None


def _save(cache_dir: str, key, database, left_to_re: list[int]) -> None:
    """The database after a line naming the patterns left to `re` (the first pass is
    only right with both: the file is written whole, atomically)."""
    if not cache_dir:
        return
    import os

    from .fileio import atomic_write, ensure_private_dir

    path = _cache_path(cache_dir, key, "redact-custom")
    body = hyperscan.dumpb(database) if database is not None else b""
    try:
        atomic_write(os.path.join(ensure_private_dir(cache_dir), os.path.basename(path)),
                     ",".join(map(str, left_to_re)).encode("ascii") + b"\n" + body)
    except OSError:
        pass  # a cache only


def _cached_database(expressions: list[bytes], flags: list[int], cache_dir: str):
    if not cache_dir:
        return _compile(expressions, flags)
    import os

    from .fileio import atomic_write, ensure_private_dir, read_private_file

    path = _cache_path(cache_dir, (expressions, flags))
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
