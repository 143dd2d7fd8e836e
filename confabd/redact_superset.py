"""A user's `re` pattern as a Hyperscan byte pattern that matches at least where it does.

`Redactor` gates a line on `custom.search(line.decode("utf-8", "surrogateescape"))`:
a `str` search with Python's semantics on one line. Hyperscan scans the UTF-8 bytes
of a whole batch with PCRE-like semantics. Compiling the user's text as is would
differ where it matters (a leak, not a slowdown): `\\d`, `\\w`, `\\s`, `.` and
`(?i)` reach non-ASCII characters in `str` mode (one character, several bytes),
`\\A`/`\\Z` would mean the batch's ends, and look-arounds and back-references do
not compile. So the pattern is re-written from Python's own parse of it, item by
item, into a byte pattern whose matches include the bytes of every match the
`str` pattern has on a line:

- each one-character item becomes the exact set of ASCII bytes it matches (found
  by asking `re` itself, 127 tries), plus, when it can match a non-ASCII character,
  the UTF-8 of that character (a literal) or any run of 1 to 4 bytes >= 0x80 (one
  character of valid UTF-8, or one invalid byte, which surrogateescape makes one
  character). `(?i)` with ASCII letters adds the only four non-ASCII characters it
  matches: U+0130, U+0131, U+017F, U+212A (the `re` docs; tests check it);
- no item matches a newline (a line holds none), so no match spans two lines and
  its last byte names its line;
- `^`, `\\A` become `^` and `$`, `\\Z` become `$` in Hyperscan's multi-line mode
  (a line's start and end); `\\b`, `\\B` and look-arounds are dropped (fewer
  conditions, more matches); a back-reference becomes "any bytes of the line";
  atomic groups and possessive repeats become plain ones (they only remove matches);
  a conditional group becomes "either branch".

Anything else (a construct this does not know, a Python version that parses
differently) gives None, and the caller runs that pattern with `re` on every line:
slower, never wrong. Over-matching only costs speed: flagged lines are decided by
`Redactor.redact_line`.
"""

from __future__ import annotations

import re
from typing import Optional

try:
    from re import _constants as _C, _parser
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _C  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

_NON_ASCII_CHAR = b"[\\x80-\\xff]{1,4}"
_LINE_BYTES = b"[\\x00-\\x09\\x0b-\\xff]*"
# The non-ASCII characters `(?i)` matches with ASCII letters (re docs, "IGNORECASE").
_CASELESS_TWINS = tuple(chr(c).encode() for c in (0x130, 0x131, 0x17F, 0x212A))
_CHAR_FLAGS = re.IGNORECASE | re.ASCII | re.DOTALL
_CATEGORIES = {
    _C.CATEGORY_DIGIT: r"\d", _C.CATEGORY_NOT_DIGIT: r"\D", _C.CATEGORY_SPACE: r"\s",
    _C.CATEGORY_NOT_SPACE: r"\S", _C.CATEGORY_WORD: r"\w", _C.CATEGORY_NOT_WORD: r"\W",
}
_ASCII_CATEGORIES = (_C.CATEGORY_DIGIT, _C.CATEGORY_SPACE, _C.CATEGORY_WORD)


class _Unsupported(Exception):
    pass


def superset_pattern(pattern: re.Pattern[str]) -> Optional[bytes]:
    """The byte pattern (for Hyperscan with HS_FLAG_MULTILINE), or None when there is none."""
    if not isinstance(pattern.pattern, str):
        return None
    try:
        parsed = _parser.parse(pattern.pattern, pattern.flags)
        return _sequence(parsed, parsed.state.flags)
    except Exception:  # _Unsupported, or a parser this does not know: `re` on every line
        return None


def _sequence(items, flags: int) -> bytes:
    return b"".join(_item(op, av, flags) for op, av in items)


def _item(op, av, flags: int) -> bytes:
    if op in (_C.LITERAL, _C.NOT_LITERAL, _C.ANY, _C.IN):
        return _one_char(op, av, flags)
    if op is _C.SUBPATTERN:
        _group, add, remove, sub = av
        return b"(?:" + _sequence(sub, (flags | add) & ~remove) + b")"
    if op is _C.BRANCH:
        return b"(?:" + b"|".join(_sequence(sub, flags) for sub in av[1]) + b")"
    if op in (_C.MAX_REPEAT, _C.MIN_REPEAT, getattr(_C, "POSSESSIVE_REPEAT", _C.MAX_REPEAT)):
        low, high, sub = av
        bound = b"%d," % low if high == _C.MAXREPEAT else b"%d,%d" % (low, high)
        return b"(?:" + _sequence(sub, flags) + b"){" + bound + b"}"
    if op is getattr(_C, "ATOMIC_GROUP", None):
        return b"(?:" + _sequence(av, flags) + b")"
    if op is _C.AT:
        if av in (_C.AT_BEGINNING, _C.AT_BEGINNING_STRING):
            return b"^"
        if av in (_C.AT_END, _C.AT_END_STRING):
            return b"$"
        if av in (_C.AT_BOUNDARY, _C.AT_NON_BOUNDARY):
            return b""
        raise _Unsupported(av)
    if op in (_C.ASSERT, _C.ASSERT_NOT):
        return b""
    if op is _C.GROUPREF:
        return b"(?:" + _LINE_BYTES + b")"
    if op is _C.GROUPREF_EXISTS:
        _group, yes, no = av
        return b"(?:" + _sequence(yes, flags) + b"|" + (_sequence(no, flags) if no else b"") + b")"
    raise _Unsupported(op)


def _one_char(op, av, flags: int) -> bytes:
    """One character: its ASCII bytes by asking `re`, its non-ASCII ones by the rules above."""
    source, non_ascii = _char_source(op, av, flags)
    tester = re.compile(source, flags & _CHAR_FLAGS)
    ascii_bytes = [c for c in range(128) if c != 10 and tester.fullmatch(chr(c))]
    alternatives = [_byte_class(ascii_bytes)] if ascii_bytes else []
    caseless_letter = (flags & re.IGNORECASE and not flags & re.ASCII
                       and any(chr(c).isalpha() for c in ascii_bytes))
    if non_ascii is None and caseless_letter:
        non_ascii = b"|".join(re.escape(twin) for twin in _CASELESS_TWINS)
    if non_ascii:
        alternatives.append(non_ascii)
    if not alternatives:
        raise _Unsupported("matches nothing inside a line")
    return b"(?:" + b"|".join(alternatives) + b")"


def _char_source(op, av, flags: int) -> tuple[str, Optional[bytes]]:
    """`re` source for one character item, and what it may match beyond ASCII
    (None: nothing; bytes: a pattern for those bytes)."""
    if op is _C.LITERAL:
        if av < 128:
            return _escape(av), None
        exact = chr(av).encode("utf-8", "surrogateescape") if not flags & re.IGNORECASE else None
        return _escape(av), re.escape(exact) if exact else _NON_ASCII_CHAR
    if op is _C.NOT_LITERAL:
        return "[^" + _escape(av) + "]", _NON_ASCII_CHAR
    if op is _C.ANY:
        return ".", _NON_ASCII_CHAR
    members, non_ascii = [], None
    for kind, value in av:
        if kind is _C.NEGATE:
            members.insert(0, "^")
            non_ascii = _NON_ASCII_CHAR
        elif kind is _C.LITERAL:
            members.append(_escape(value))
            non_ascii = _NON_ASCII_CHAR if value >= 128 else non_ascii
        elif kind is _C.RANGE:
            members.append(_escape(value[0]) + "-" + _escape(value[1]))
            non_ascii = _NON_ASCII_CHAR if value[1] >= 128 else non_ascii
        elif kind is _C.CATEGORY and value in _CATEGORIES:
            members.append(_CATEGORIES[value])
            if not (flags & re.ASCII and value in _ASCII_CATEGORIES):
                non_ascii = _NON_ASCII_CHAR
        else:
            raise _Unsupported(kind)
    return "[" + "".join(members) + "]", non_ascii


def _escape(code: int) -> str:
    return "\\U%08x" % code


def _byte_class(codes: list[int]) -> bytes:
    """`[...]` of the (sorted) byte values, runs written as ranges."""
    runs: list[list[int]] = []
    for code in codes:
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return b"[" + b"".join(b"\\x%02x" % a if a == b else b"\\x%02x-\\x%02x" % (a, b) for a, b in runs) + b"]"
