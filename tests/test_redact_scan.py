"""The redaction's first pass (Hyperscan, redact_scan.py) and the `re` fallback give the same lines.

Every default pattern's positive and near-miss examples, as prose and inside JSON, several
secrets on one line and in a row, the fixtures, non-UTF-8 and custom patterns: through
`Redactor.redact_lines` with the first pass, and through `redact_line` line by line (the path
without Hyperscan), the output must be the same objects or the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
import subprocess
import sys

import pytest

from confabd import redact, redact_superset
from confabd.redact import Redactor
from confabd.redact_scan import compile_custom_first_pass, compile_first_pass, flagged_lines, hyperscan
from tests.data import TRANSCRIPTS
from tests.test_redact import NEGATIVE, POSITIVE

needs_hyperscan = pytest.mark.skipif(hyperscan is None, reason="hyperscan is not installed")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test compiles custom first passes into its own cache, not ~/.confab/cache."""
    monkeypatch.setattr(redact, "_cache_dir", lambda: str(tmp_path / "cache"))
    monkeypatch.setattr(redact, "_CUSTOM_FIRST_PASSES", {})


def corpus_lines() -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(TRANSCRIPTS.glob("*.jsonl")):
        lines += path.read_bytes().split(b"\n")[:-1]
    examples = [text for text, _ in POSITIVE] + NEGATIVE + [
        line.decode() for line in CUSTOM_LINES if line.isascii() or _is_utf8(line)]
    planted = []
    for index, text in enumerate(examples):
        planted.append(text.encode())
        planted.append(json.dumps({"type": "user", "message": {"content": f"see {text} now"}}).encode())
        planted.append(json.dumps({"a": text, "b": [examples[index - 1], {"password": "x"}]}).encode())
    planted += CUSTOM_LINES + [b"", b"\xff\xfe bad utf-8 " + POSITIVE[0][0].encode(), b'{"token": "abc"}\r',
                (POSITIVE[3][0] + " " + POSITIVE[6][0]).encode()]
    # the secrets among ordinary lines, and several in a row at the start and at the end
    mixed = planted[:5] + [x for pair in zip(lines, planted * 4) for x in pair] + planted[-5:]
    return mixed + lines


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True


def by_line(redactor: Redactor, lines: list[bytes]) -> list[bytes]:
    return [redactor.redact_line(line) for line in lines]


# Custom value patterns for the first pass: what Hyperscan has no syntax for (look-arounds,
# back-references, conditionals), classes that span "\n" in a joined batch, `(?i)` and
# `\d`/`\w`/`.` on non-ASCII text, per-line anchors, invalid UTF-8, and ones left to `re`
# (can match empty, too large, never inside a line).
CUSTOM_PATTERNS = [
    r"TICKET-\d{4,}",
    r"(?i)Ünïcode\w+",
    r"(?i)kelvin-[a-z]+",
    r"(?<![\w-])acct_[0-9a-f]{12}(?![\w-])",
    r"(?<=user=)[a-z]{3,}",
    r"(['\"])tok=([^'\"]+)\1",
    r"secret\s*:\s*\S+",
    r"[^\x00-\x7f]{3}x",
    r"\Aheader:.{5}",
    r"end-marker\Z",
    r"^\s*$",
    r"(?x) id \s* = \s* (?P<v>\d+)? (?(v)!|\?)",
    r"\bword\B",
    r"(?a)\w{3}\d{2}",
    r"[\udc80-\udcff]bad",
    r"q{2,70000}z",
    r"(?s).a\n",
]
CUSTOM_LINES = [
    b"TICKET-1234", "TICKET-\u0663\u0664\u0665\u0666 arabic digits".encode(), "TICKET-١٢٣٤".encode(),
    "ÜNÏCODEé and ünïcodeß".encode(), "\u212aelvin-ab \u017ftuff KELVIN-\u017f".encode(),
    b"acct_0123456789ab", b"x-acct_0123456789ab", b"acct_0123456789abc", b"user=bob", b"user=BOB",
    b"'tok=abc'", b"'tok=abc\"", b'{"a": "\\"tok=x\\""}', b"secret", b": x", b"secret :", b"s",
    b"secret\t:\xc2\xa0v",
    "ééé x".encode(), "\u2028\u2028\u2028x".encode(), b"header:12345", b"x header:12345", "header:ééééé".encode(),
    b"the end-marker", b"end-marker ", b"", b"   ", b"\t", b"id = 42!", b"id = ?", b"id=4?", b"wordy", b"word",
    "wordé".encode(), b"abc12", "ab\u00e912".encode(), b"\x80bad", b"\xffbad",
    "\udc80bad".encode("utf-8", "surrogatepass"),
    b"qqz", b"qz", b"ba\r", b'k"k"', b'a"A"', b'{"k": "a\\nb"}',
]
CUSTOM_CONFIG = {"enabled": True, "patterns": [
    {"name": f"custom {i}", "type": f"custom{i}", "pattern": p} for i, p in enumerate(CUSTOM_PATTERNS)]}

CONFIGS = {
    "defaults": {"enabled": True},
    "defaults+custom value": {"enabled": True, "patterns": [
        {"name": "ticket", "type": "ticket", "pattern": r"TICKET-\d{4,}"},
        {"name": "word", "pattern": r"(?i)Ünïcode\w+", "type": "word"}]},
    "defaults+many custom": CUSTOM_CONFIG,
    "many custom only": {**CUSTOM_CONFIG, "use_default_patterns": False},
    "defaults+custom field": {"enabled": True, "patterns": [{"name": "f", "field_pattern": "(?i)^sessionid$"}]},
    "custom only": {"enabled": True, "use_default_patterns": False,
                    "patterns": [{"name": "uuid-ish", "pattern": r"[0-9a-f]{8}-[0-9a-f]{4}", "capture_group": 0}]},
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_first_pass_and_fallback_give_the_same_lines(config):
    lines = corpus_lines()
    redactor = Redactor.from_config(config)
    expected = by_line(redactor, lines)
    assert expected != lines  # the corpus does hold secrets for this config
    got = redactor.redact_lines(lines)
    assert got == expected
    # a line nothing matched is the very object read, so it goes out byte for byte
    assert all((g is line) == (e is line) for g, e, line in zip(got, expected, lines))


@needs_hyperscan
def test_the_first_pass_is_used_and_flags_every_line_the_re_prefilter_flags():
    assert redact._default_first_pass() is not None
    lines = corpus_lines()
    flagged = set(flagged_lines(lines, redact._default_first_pass()))
    by_re = {i for i, line in enumerate(lines) if redact._DEFAULT_PREFILTER.search(line)}
    assert by_re and flagged == by_re  # the same anchors: neither more lines nor fewer


@needs_hyperscan
def test_every_hit_is_reported_not_only_each_patterns_first():
    """The HS_FLAG_SINGLEMATCH pitfall: the same pattern on lines 1 and 3 of one batch."""
    first_pass = compile_first_pass([("ghp_", "", False), ("bearer", "", True)])
    lines = [b"ghp_a", b"clean", b"x ghp_b ghp_c", b"BEARER", b"clean", b"Bearer"]
    assert flagged_lines(lines, first_pass) == [0, 2, 3, 5]
    assert flagged_lines([b"", b"", b"ghp_"], first_pass) == [2]
    assert flagged_lines([], first_pass) == []


def test_without_hyperscan_the_fallback_is_taken(monkeypatch):
    """The import fallback, in a process where `import hyperscan` fails: the default
    patterns, and the custom ones over the whole corpus (the same lines as `redact_line`)."""
    code = (
        "import sys; sys.modules['hyperscan'] = None\n"
        "from confabd import redact\n"
        "from tests.test_redact_scan import CONFIGS, by_line, corpus_lines\n"
        "r = redact.Redactor.from_config({'enabled': True})\n"
        "lines = [b'ghp_' + b'a1B2' * 9, b'clean']\n"
        "assert redact._default_first_pass() is None\n"
        "out = r.redact_lines(lines)\n"
        "assert out == [b'[REDACTED:GITHUB_TOKEN]', b'clean'] and out[1] is lines[1], out\n"
        "for name in ('defaults+many custom', 'many custom only'):\n"
        "    r = redact.Redactor.from_config(CONFIGS[name])\n"
        "    assert redact._custom_first_pass(True, [rule.regex for rule in r._custom_rules]) is None\n"
        "    lines = corpus_lines()\n"
        "    assert r.redact_lines(lines) == by_line(r, lines) != lines, name\n"
        "print('fallback ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert result.returncode == 0 and "fallback ok" in result.stdout, result.stderr


@needs_hyperscan
def test_the_compiled_database_is_cached_privately_and_a_bad_cache_is_replaced(tmp_path):
    anchors = [("ghp_", "", False), ("sk-", "(?:proj-)?[A-Za-z0-9_-]{20}", False)]
    cache = tmp_path / "cache"
    lines = [b"x", b"ghp_" + b"a" * 36, b"sk-" + b"b" * 20]
    assert flagged_lines(lines, compile_first_pass(anchors, str(cache))) == [1, 2]
    (saved,) = cache.iterdir()
    assert saved.name.startswith("redact-") and saved.stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700
    good = saved.read_bytes()
    assert flagged_lines(lines, compile_first_pass(anchors, str(cache))) == [1, 2]  # loaded, same answer
    saved.write_bytes(b"not a database" + good[14:])
    assert flagged_lines(lines, compile_first_pass(anchors, str(cache))) == [1, 2]  # compiled again
    assert saved.read_bytes() == good
    other = compile_first_pass([("AKIA", "", False)], str(cache))  # other patterns: another file
    assert flagged_lines(lines + [b"AKIA"], other) == [3] and len(list(cache.iterdir())) == 2


# Short patterns over a small alphabet of the characters where `str` and byte semantics part.
FUZZ_PATTERNS = [r"(?i)k\w", r"\d\d", r"\s\S", r"[^a]{2}", r"a.b", r"\W{2}", r"(?i)[a-z]{2}", r"(?<=a)b", r"(\w)\1",
                 r"^.{3}$", r"\Bk", r"(?i)İ", r"(?a)\w\w\w", r"é+", r"(?i)É", r"[é-ü]", r"(?<!\s)a", r"b(?!\S)",
                 r'(a|k)"\1"', r"(?>a+)b", r"a*+b", r"[\s\S]\s", r"(?:a|k){2,3000}b"]
FUZZ_ALPHABET = ["a", "b", "k", "K", "\u212a", "\u017f", "\u0130", "\u0131", "1", "\u0663", "_", " ", "\t", "\xa0",
                 "\u2028", "\x1c", "é", "É", "ü", "\U0001f600", '"', "\r", "\udc80", "\udcff"]


def fuzz_lines(count: int = 3000) -> list[bytes]:
    rng = random.Random(15)
    return [("".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randrange(0, 8)))).encode("utf-8", "surrogateescape")
            for _ in range(count)]


def lines_re_finds(pattern: re.Pattern[str], lines: list[bytes]) -> set[int]:
    """What `Redactor._may_contain_secret` asks of a custom pattern, line by line."""
    return {i for i, line in enumerate(lines) if pattern.search(line.decode("utf-8", "surrogateescape"))}


def lines_flagged(pattern: re.Pattern[str], lines: list[bytes], joined: bytes | None = None) -> set[int]:
    first_pass, left_to_re = compile_custom_first_pass((), [pattern])
    if left_to_re:
        return set(range(len(lines)))  # every line goes to `re`
    return set(flagged_lines(lines, first_pass, joined))


@needs_hyperscan
@pytest.mark.parametrize("source", CUSTOM_PATTERNS + FUZZ_PATTERNS)
def test_a_custom_patterns_first_pass_flags_every_line_re_finds(source):
    """Never a line fewer than `re` (more only costs time), in any position of a batch,
    with or without a trailing newline, whatever the line's neighbours hold."""
    pattern = re.compile(source)
    lines = fuzz_lines() + CUSTOM_LINES + [line for pair in zip(CUSTOM_LINES, fuzz_lines(len(CUSTOM_LINES)))
                                           for line in pair]
    expected = lines_re_finds(pattern, lines)
    assert expected <= lines_flagged(pattern, lines)
    assert expected <= lines_flagged(pattern, lines, b"\n".join(lines) + b"\n")
    reversed_lines = lines[::-1]
    assert lines_re_finds(pattern, reversed_lines) <= lines_flagged(pattern, reversed_lines)


@needs_hyperscan
def test_only_what_hyperscan_cannot_take_is_left_to_re():
    """Look-arounds, back-references and conditionals go into the database as supersets;
    a pattern that can match empty, one too large even as a prefilter, and one needing a
    newline (never inside a line) are searched with `re`."""
    left = [source for source in CUSTOM_PATTERNS + FUZZ_PATTERNS
            if compile_custom_first_pass((), [re.compile(source)])[1]]
    assert left == [r"^\s*$", r"q{2,70000}z", r"(?s).a\n"]


def test_caseless_ascii_letters_match_only_the_four_documented_non_ascii_letters():
    """redact_superset.py's `(?i)` rule, checked against `re` over every code point."""
    everything = "".join(map(chr, range(0x80, 0x110000)))
    for source in [f"(?i){letter}" for letter in string.ascii_letters] + ["(?i)[a-zA-Z]"]:
        found = {c.encode("utf-8", "surrogatepass") for c in re.findall(source, everything)}
        assert found <= set(redact_superset._CASELESS_TWINS), (source, found)
    assert not re.findall("(?ai)[a-zA-Z]", everything)  # with re.ASCII, none: no twins added


def count_redact_line_calls(redactor: Redactor, lines: list[bytes]) -> int:
    calls = []
    real = redactor.redact_line

    def counting(line):
        calls.append(line)
        return real(line)

    redactor.redact_line = counting  # the instance's, for this count only
    redactor.redact_lines(lines)
    return len(calls)


# Patterns `re` finds on few lines of the fixtures, among them what Hyperscan has no syntax for.
RARE_PATTERNS = [r"TICKET-\d{4,}", r"(?i)Ünïcode\w+", r"(?<![\w-])acct_[0-9a-f]{12}(?![\w-])",
                 r"(['\"])tok=([^'\"]+)\1", r"secret\s*:\s*\S+", r"\Aheader:.{5}"]


@needs_hyperscan
@pytest.mark.parametrize("use_defaults", [True, False])
def test_custom_patterns_use_the_first_pass(use_defaults):
    """On clean lines, only the few the first pass flags reach `redact_line` (before:
    with any custom pattern, every line did)."""
    lines = [line for path in sorted(TRANSCRIPTS.glob("*.jsonl")) for line in path.read_bytes().split(b"\n")[:-1]]
    redactor = Redactor.from_config({"enabled": True, "use_default_patterns": use_defaults, "patterns": [
        {"name": f"rare {i}", "pattern": source} for i, source in enumerate(RARE_PATTERNS)]})
    assert len(lines) > 100
    assert count_redact_line_calls(redactor, lines) < len(lines) / 10


@needs_hyperscan
def test_a_custom_field_pattern_still_sends_every_json_line_on():
    """A field pattern can name any key, escaped or not: every JSON line goes to `redact_line`,
    and text lines only when the first pass flags them."""
    redactor = Redactor.from_config(CONFIGS["defaults+custom field"])
    lines = [b'{"a": 1}', b"plain", b"[1]", b"plain ghp_" + b"a" * 36]
    assert count_redact_line_calls(redactor, lines) == 3


@needs_hyperscan
def test_the_custom_database_is_cached_under_the_custom_patterns_with_what_it_left_to_re(tmp_path, monkeypatch):
    from confabd import redact_scan

    cache = tmp_path / "own-cache"
    patterns = [re.compile(r"(?<=x)TICKET-\d+"), re.compile(r"^\s*$")]
    lines = [b"xTICKET-12", b"TICKET-12", b"   ", b"clean"]

    def first_pass_and_left(patterns):
        first_pass, left_to_re = compile_custom_first_pass([("ghp_", "", False)], patterns, str(cache))
        return flagged_lines(lines, first_pass), left_to_re

    assert first_pass_and_left(patterns) == ([0, 1], [1])
    (saved,) = cache.iterdir()
    assert saved.name.startswith("redact-custom-") and saved.stat().st_mode & 0o777 == 0o600
    compiled = []
    real_compile = redact_scan._compile
    monkeypatch.setattr(redact_scan, "_compile", lambda *a: compiled.append(a) or real_compile(*a))
    assert first_pass_and_left(patterns) == ([0, 1], [1]) and not compiled  # loaded, with what was left to re
    saved.write_bytes(b"0\nnot a database")
    assert first_pass_and_left(patterns) == ([0, 1], [1]) and compiled  # compiled again, replaced
    assert first_pass_and_left([re.compile("clean")]) == ([3], [])  # other custom patterns: another file
    assert len(list(cache.iterdir())) == 2


@needs_hyperscan
def test_patterns_that_compile_alone_but_not_together_are_all_left_to_re(monkeypatch):
    from confabd import redact_scan

    real_compile = redact_scan._compile

    def alone_only(expressions, flags):
        if len(expressions) > 2:
            raise hyperscan.CompilerError("too large together (simulated)")
        return real_compile(expressions, flags)

    monkeypatch.setattr(redact_scan, "_compile", alone_only)
    patterns = [re.compile("TICKET-1"), re.compile("TICKET-2")]
    first_pass, left_to_re = compile_custom_first_pass([("ghp_", "", False)], patterns)
    assert left_to_re == [0, 1] and flagged_lines([b"TICKET-1", b"ghp_"], first_pass) == [1]


@needs_hyperscan
def test_a_pattern_too_large_as_it_is_goes_in_as_a_hyperscan_prefilter(monkeypatch):
    """HS_FLAG_PREFILTER: Hyperscan's looser pattern, which matches at least as much."""
    from confabd import redact_scan

    real_compile = redact_scan._compile
    tried = []

    def only_as_prefilter(expressions, flags):
        tried.append(flags)
        if not all(flag & hyperscan.HS_FLAG_PREFILTER for flag in flags):
            raise hyperscan.CompilerError("Pattern is too large (simulated)")
        return real_compile(expressions, flags)

    monkeypatch.setattr(redact_scan, "_compile", only_as_prefilter)
    pattern = re.compile(r"(?<=k)(a|k)\1{2,50}b")
    first_pass, left_to_re = compile_custom_first_pass((), [pattern])
    assert left_to_re == [] and tried[-1] == [hyperscan.HS_FLAG_MULTILINE | hyperscan.HS_FLAG_PREFILTER]
    lines = fuzz_lines() + [b"kaaab", b"kkkkb", b"kab"]
    assert lines_re_finds(pattern, lines) <= set(flagged_lines(lines, first_pass))
