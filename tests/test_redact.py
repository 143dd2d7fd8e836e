"""Tests for confabd.redact: default patterns, custom patterns, byte identity."""

from __future__ import annotations

import json
import re

import pytest

from tests.data import TRANSCRIPTS

from confabd.redact import DEFAULT_PATTERNS, Redactor

FIXTURES = sorted(str(p) for p in TRANSCRIPTS.glob("*.jsonl"))

A36 = "aB3" * 12  # 36 alphanumerics
HEX32 = "0123456789abcdef" * 2
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # 40 chars


@pytest.fixture
def redactor() -> Redactor:
    r = Redactor.from_config({"enabled": True})
    assert r is not None
    return r


def redact_text(redactor: Redactor, text: str) -> str:
    return redactor.redact_line(text.encode()).decode()


# (text, expected) for every default value pattern: the secret sits in prose.
POSITIVE = [
    ("key sk-ant-api03-" + "x" * 95 + " end", "key [REDACTED:API_KEY] end"),
    ("key sk-proj-" + "a" * 30, "key [REDACTED:API_KEY]"),
    ("key sk-" + "Z9_-" * 6, "key [REDACTED:API_KEY]"),
    ("id AKIAIOSFODNN7EXAMPLE.", "id [REDACTED:AWS_KEY]."),
    (f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_access_key = [REDACTED:AWS_SECRET]"),
    (f'export AWS_SECRET_ACCESS_KEY="{AWS_SECRET}"', 'export AWS_SECRET_ACCESS_KEY="[REDACTED:AWS_SECRET]"'),
    (f"t=ghp_{A36}", "t=[REDACTED:GITHUB_TOKEN]"),
    ("t=github_pat_" + "A1" * 11, "t=[REDACTED:GITHUB_TOKEN]"),
    (f"t=gho_{A36}", "t=[REDACTED:GITHUB_TOKEN]"),
    (f"t=ghu_{A36} ghs_{A36}", "t=[REDACTED:GITHUB_TOKEN] [REDACTED:GITHUB_TOKEN]"),
    (f"t=ghr_{A36}", "t=[REDACTED:GITHUB_TOKEN]"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "Bearer [REDACTED:JWT]"),
    ("-----BEGIN PRIVATE KEY-----MIIEv-----END PRIVATE KEY-----", "[REDACTED:PRIVATE_KEY]"),
    ("k -----BEGIN RSA PRIVATE KEY-----abc-----END RSA PRIVATE KEY----- x", "k [REDACTED:PRIVATE_KEY] x"),
    ("-----BEGIN EC PRIVATE KEY-----abc-----END EC PRIVATE KEY-----", "[REDACTED:PRIVATE_KEY]"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----a-----END OPENSSH PRIVATE KEY-----", "[REDACTED:PRIVATE_KEY]"),
    ("postgres://user:secret@host/db", "postgres://user:[REDACTED:PASSWORD]@host/db"),
    ("postgresql://u:p4ss@h:5432/d", "postgresql://u:[REDACTED:PASSWORD]@h:5432/d"),
    ("mysql://root:toor@localhost/x", "mysql://root:[REDACTED:PASSWORD]@localhost/x"),
    ("mongodb+srv://me:pw@cluster0.example.net", "mongodb+srv://me:[REDACTED:PASSWORD]@cluster0.example.net"),
    ("redis://:hunter2@cache:6379", "redis://:[REDACTED:PASSWORD]@cache:6379"),
    ("https://alice:pw123@example.com/x", "https://alice:[REDACTED:PASSWORD]@example.com/x"),
    ("xoxb-1234567890-abcdefghij", "[REDACTED:SLACK_TOKEN]"),
    ("xoxe.a1-1234567890ab", "[REDACTED:SLACK_TOKEN]"),
    ("xapp-1-A0123456789", "[REDACTED:SLACK_TOKEN]"),
    ("sk_live_" + "a1" * 12, "[REDACTED:STRIPE_KEY]"),
    ("rk_test_" + "b2" * 12, "[REDACTED:STRIPE_KEY]"),
    ("k=AIza" + "Sy-_0" * 7, "k=[REDACTED:GOOGLE_API_KEY]"),
    (f"SK{HEX32}", "[REDACTED:TWILIO_KEY]"),
    ("SG." + "a" * 22 + "." + "b" * 43, "[REDACTED:SENDGRID_KEY]"),
    (f"{HEX32}-us12", "[REDACTED:MAILCHIMP_KEY]"),
    (f"npm_{A36}", "[REDACTED:NPM_TOKEN]"),
    ("pypi-AgEIcHlwaS5vcmc" + "x" * 70, "[REDACTED:PYPI_TOKEN]"),
    ("cfb_" + "k" * 40, "[REDACTED:CONFAB_KEY]"),
    ("key cfb_Ab-_" + "k" * 36 + " here", "key [REDACTED:CONFAB_KEY] here"),
    ("cfb_" + "a" * 10 + "sk-" + "b" * 27, "[REDACTED:CONFAB_KEY]"),  # not half taken by the OpenAI rule
    ("Authorization: Bearer " + "t0k.en~+/=-_" * 3, "Authorization: Bearer [REDACTED:BEARER_TOKEN]"),
    ("curl -H 'authorization: bearer " + "Z" * 20 + "'", "curl -H 'authorization: bearer [REDACTED:BEARER_TOKEN]'"),
]

# Near misses: each looks like a secret but must pass byte for byte.
NEGATIVE = [
    "key sk-ant-api03-short",
    "task-notification and sk-tooShort",
    "AKIAiosfodnn7example",
    "aws_secret_access_key = tooshort",
    "AWS_SECRET_ACCESS_KEY=$FROM_VAULT",
    "ghp_short gho_short ghu_x ghs_y ghr_z github_pat_short",
    "eyJhbGciOiJIUzI1NiJ9.notajwt",
    "-----BEGIN RSA PRIVATE KEY-----abc-----END EC PRIVATE KEY-----",
    "-----BEGIN PUBLIC KEY-----abc-----END PUBLIC KEY-----",
    "postgres://localhost/db and https://example.com:8080/path",
    "mail me at bob@example.com",
    "xoxz-1234567890 xapp-short",
    "sk_live_short rk_prod_" + "a" * 30,
    "AIza" + "b" * 34 + "!",
    "SK" + HEX32[:31] + "g",
    "SG." + "a" * 21 + "." + "b" * 43,
    HEX32[:31] + "-us12",
    "npm_" + A36[:35],
    "pypi-AgEIcHlwaS5vcmc" + "x" * 10,
    "cfb_" + "k" * 39,
    "Bearer " + "x" * 19, "bearer tokens are short-lived",
    '{"passwords": "x", "token_count": "3", "output_tokens": 7}',
]


@pytest.mark.parametrize("text,expected", POSITIVE)
def test_default_pattern_redacts(redactor, text, expected):
    assert redact_text(redactor, text) == expected
    assert redactor.hits == expected.count("[REDACTED:")


@pytest.mark.parametrize("text,expected", POSITIVE)
def test_default_pattern_inside_json_value(redactor, text, expected):
    """The raw-bytes prefilter must still fire once the secret is JSON-escaped."""
    line = json.dumps({"message": {"content": [{"text": "x\n" + text}]}}).encode()
    out = redactor.redact_line(line)
    assert json.loads(out) == {"message": {"content": [{"text": "x\n" + expected}]}}


@pytest.mark.parametrize("text", NEGATIVE)
def test_near_miss_is_untouched(redactor, text):
    line = text.encode()
    assert redactor.redact_line(line) is line
    assert redactor.hits == 0


def test_every_default_pattern_has_a_positive_example():
    value_specs = [spec for spec in DEFAULT_PATTERNS if spec.regex]
    examples = [text for text, _ in POSITIVE]
    for spec in value_specs:
        assert any(re.search(spec.regex, text) for text in examples), spec.name


def test_private_key_with_real_newlines_in_json(redactor):
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    line = json.dumps({"type": "user", "content": "here:\n" + key + "done"}).encode()
    assert b"\\n" in line  # the key's newlines are escaped in the raw line
    out = json.loads(redactor.redact_line(line))
    assert out == {"type": "user", "content": "here:\n[REDACTED:PRIVATE_KEY]\ndone"}


def test_connection_string_counts_one_hit(redactor):
    redact_text(redactor, "postgres://user:secret@host/db")
    assert redactor.hits == 1  # the generic rule does not re-redact the marker


def test_secret_deep_in_nested_json(redactor):
    doc = {
        "uuid": "a1b2",
        "n": 3,
        "ok": True,
        "none": None,
        "f": 1.5,
        "message": {"content": [{"type": "tool_result", "content": [
            {"text": "first"},
            {"text": f"AKIAIOSFODNN7EXAMPLE and ghp_{A36}", "meta": ["é ünïcode", 7]},
        ]}]},
    }
    out = redactor.redact_line(json.dumps(doc).encode())
    expected = json.loads(json.dumps(doc))
    expected["message"]["content"][0]["content"][1]["text"] = (
        "[REDACTED:AWS_KEY] and [REDACTED:GITHUB_TOKEN]"
    )
    assert json.loads(out) == expected
    assert redactor.hits == 2


def test_keys_are_never_redacted(redactor):
    line = json.dumps({"AKIAIOSFODNN7EXAMPLE": "v"}).encode()
    assert redactor.redact_line(line) is line


def test_sensitive_field_names(redactor):
    doc = {
        "password": "hunter2",
        "nested": [{"Api_Key": "abc"}, {"ACCESS_TOKEN": "t0k"}, {"credentials": "c"}],
        "token": 12345,  # not a string: left alone
        "secret": {"inner": "plain"},  # not a string: recurse, nothing to do
        "passwords": "kept",
        "input_tokens": "kept",
    }
    out = json.loads(redactor.redact_line(json.dumps(doc).encode()))
    assert out["password"] == "[REDACTED:SENSITIVE_FIELD]"
    assert out["nested"] == [
        {"Api_Key": "[REDACTED:SENSITIVE_FIELD]"},
        {"ACCESS_TOKEN": "[REDACTED:SENSITIVE_FIELD]"},
        {"credentials": "[REDACTED:SENSITIVE_FIELD]"},
    ]
    assert out["token"] == 12345
    assert out["secret"] == {"inner": "plain"}
    assert out["passwords"] == "kept" and out["input_tokens"] == "kept"
    assert redactor.hits == 4


def test_sensitive_field_with_spaces_and_mixed_case(redactor):
    line = b'{"PassWord" :  "hunter2", "x": 1}'
    assert json.loads(redactor.redact_line(line)) == {"PassWord": "[REDACTED:SENSITIVE_FIELD]", "x": 1}


def test_sensitive_field_non_string_keeps_bytes(redactor):
    line = b'{"token": 123, "password": null, "secret": ["a"]}'
    assert redactor.redact_line(line) is line


def _has_secret(value) -> bool:
    """Independent oracle: does any string (or sensitive string field) match?"""
    value_res = [re.compile(s.regex) for s in DEFAULT_PATTERNS if s.regex]
    field_res = [re.compile(s.field) for s in DEFAULT_PATTERNS if s.field]
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if any(r.search(node) for r in value_res):
                return True
        elif isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and any(r.search(k) for r in field_res):
                    return True
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return False


def test_fixture_lines_change_only_when_they_hold_a_secret(redactor):
    assert FIXTURES, "no transcript fixtures found"
    total = changed = 0
    for path in FIXTURES:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        for line in lines:
            total += 1
            out = redactor.redact_line(line)
            try:
                secret = _has_secret(json.loads(line)) if line.strip() else False
            except ValueError:
                secret = _has_secret(line.decode("utf-8", "surrogateescape"))
            if secret:
                changed += 1
                assert out != line
                json.loads(out)  # still valid JSON
            else:
                assert out is line, line[:200]
    assert total > 100 and changed < total // 10


def test_fixture_with_planted_secret_changes_only_that_value(redactor):
    with open(FIXTURES[0], "rb") as f:
        line = next(l for l in f.read().split(b"\n") if l.startswith(b"{") and len(l) > 500)
    doc = json.loads(line)
    doc["planted"] = {"deep": ["postgres://u:pw@db/x"]}
    out = json.loads(redactor.redact_line(json.dumps(doc).encode()))
    assert out.pop("planted") == {"deep": ["postgres://u:[REDACTED:PASSWORD]@db/x"]}
    assert out == json.loads(line)


def test_custom_pattern_with_capture_group():
    r = Redactor.from_config({
        "enabled": True,
        "use_default_patterns": False,
        "patterns": [{"name": "employee id", "pattern": r"(emp-)(\d{6})", "type": "employee_id",
                      "capture_group": 2}],
    })
    assert redact_text(r, "see emp-123456 now") == "see emp-[REDACTED:EMPLOYEE_ID] now"
    line = b"emp-12345 sk-" + b"a" * 30  # defaults are off
    assert r.redact_line(line) is line
    assert json.loads(r.redact_line(b'{"a":["emp-654321"]}')) == {"a": ["emp-[REDACTED:EMPLOYEE_ID]"]}


def test_custom_pattern_added_to_defaults():
    r = Redactor.from_config({"enabled": True, "patterns": [
        {"name": "ticket", "pattern": r"TICKET-\d+", "type": "ticket"}]})
    out = redact_text(r, "TICKET-42 and AKIAIOSFODNN7EXAMPLE")
    assert out == "[REDACTED:TICKET] and [REDACTED:AWS_KEY]"


def test_custom_field_pattern():
    r = Redactor.from_config({"enabled": True, "patterns": [
        {"name": "session cookie", "field_pattern": r"(?i)^x-session$", "type": "cookie"}]})
    doc = {"headers": [{"X-Session": "abc123"}, {"x-other": "keep"}], "X-Session": 5}
    out = json.loads(r.redact_line(json.dumps(doc).encode()))
    assert out == {"headers": [{"X-Session": "[REDACTED:COOKIE]"}, {"x-other": "keep"}], "X-Session": 5}
    line = b'{"x-other": "keep"}'
    assert r.redact_line(line) is line


def test_invalid_custom_regex_names_the_pattern():
    with pytest.raises(ValueError, match="broken one"):
        Redactor.from_config({"enabled": True, "patterns": [
            {"name": "broken one", "pattern": "([a-z", "type": "x"}]})
    with pytest.raises(ValueError, match="bad field"):
        Redactor.from_config({"enabled": True, "patterns": [
            {"name": "bad field", "field_pattern": "*oops", "type": "x"}]})
    with pytest.raises(ValueError, match="grp"):
        Redactor.from_config({"enabled": True, "patterns": [
            {"name": "grp", "pattern": "a(b)", "type": "x", "capture_group": 2}]})


@pytest.mark.parametrize("config", [None, {}, {"enabled": False}, {"enabled": False, "patterns": []}])
def test_disabled_config_gives_none(config):
    assert Redactor.from_config(config) is None


def test_non_utf8_lines(redactor):
    plain = b"\xff\xfe binary \x80 junk"
    assert redactor.redact_line(plain) is plain
    secret = b"\xff\xfe AKIAIOSFODNN7EXAMPLE \x80"
    assert redactor.redact_line(secret) == b"\xff\xfe [REDACTED:AWS_KEY] \x80"
    broken_json = b'{"a": "\xff AKIAIOSFODNN7EXAMPLE"}'
    assert redactor.redact_line(broken_json) == b'{"a": "\xff [REDACTED:AWS_KEY]"}'


def test_non_json_lines_and_edge_cases(redactor):
    for line in (b"", b"{", b"[1, 2", b"plain text", b'"AKIA"'):
        assert redactor.redact_line(line) is line
    assert redactor.redact_line(b'{"a": "AKIAIOSFODNN7EXAMPLE"') == b'{"a": "[REDACTED:AWS_KEY]"'
    assert redactor.redact_line(b'"AKIAIOSFODNN7EXAMPLE"') == b'"[REDACTED:AWS_KEY]"'


def test_unchanged_json_keeps_original_formatting(redactor):
    line = b'{ "a" : "sk-short",  "b": 1.50 }'  # prefilter fires, nothing matches
    assert redactor.redact_line(line) is line


def test_custom_pattern_matching_empty_string_is_harmless():
    r = Redactor.from_config({"enabled": True, "use_default_patterns": False,
                              "patterns": [{"name": "opt", "pattern": r"(?:pin-\d+)?", "type": "pin"}]})
    assert redact_text(r, "a pin-42 b") == "a [REDACTED:PIN] b"
    line = b"nothing here"
    assert r.redact_line(line) is line


def test_json_with_leading_whitespace_stays_json(redactor):
    out = redactor.redact_line(b'  {"k": "AKIAIOSFODNN7EXAMPLE"}')
    assert json.loads(out) == {"k": "[REDACTED:AWS_KEY]"}
