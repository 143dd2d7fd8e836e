"""The redaction's first pass (Hyperscan, redact_scan.py) and the `re` fallback give the same lines.

Every default pattern's positive and near-miss examples, as prose and inside JSON, several
secrets on one line and in a row, the fixtures, non-UTF-8 and custom patterns: through
`Redactor.redact_lines` with the first pass, and through `redact_line` line by line (the path
without Hyperscan), the output must be the same objects or the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from confabd import redact
from confabd.redact import Redactor
from confabd.redact_scan import compile_first_pass, flagged_lines, hyperscan
from tests.data import TRANSCRIPTS
from tests.test_redact import NEGATIVE, POSITIVE

needs_hyperscan = pytest.mark.skipif(hyperscan is None, reason="hyperscan is not installed")


def corpus_lines() -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(TRANSCRIPTS.glob("*.jsonl")):
        lines += path.read_bytes().split(b"\n")[:-1]
    examples = [text for text, _ in POSITIVE] + NEGATIVE
    planted = []
    for index, text in enumerate(examples):
        planted.append(text.encode())
        planted.append(json.dumps({"type": "user", "message": {"content": f"see {text} now"}}).encode())
        planted.append(json.dumps({"a": text, "b": [examples[index - 1], {"password": "x"}]}).encode())
    planted += [b"", b"\xff\xfe bad utf-8 " + POSITIVE[0][0].encode(), b'{"token": "abc"}\r',
                (POSITIVE[3][0] + " " + POSITIVE[6][0]).encode()]
    # the secrets among ordinary lines, and several in a row at the start and at the end
    mixed = planted[:5] + [x for pair in zip(lines, planted * 4) for x in pair] + planted[-5:]
    return mixed + lines


def by_line(redactor: Redactor, lines: list[bytes]) -> list[bytes]:
    return [redactor.redact_line(line) for line in lines]


CONFIGS = {
    "defaults": {"enabled": True},
    "defaults+custom value": {"enabled": True, "patterns": [
        {"name": "ticket", "type": "ticket", "pattern": r"TICKET-\d{4,}"},
        {"name": "word", "pattern": r"(?i)Ünïcode\w+", "type": "word"}]},
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
    """The import fallback, in a process where `import hyperscan` fails."""
    code = (
        "import sys; sys.modules['hyperscan'] = None\n"
        "from confabd import redact\n"
        "r = redact.Redactor.from_config({'enabled': True})\n"
        "lines = [b'ghp_' + b'a1B2' * 9, b'clean']\n"
        "assert redact._default_first_pass() is None\n"
        "out = r.redact_lines(lines)\n"
        "assert out == [b'[REDACTED:GITHUB_TOKEN]', b'clean'] and out[1] is lines[1], out\n"
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
