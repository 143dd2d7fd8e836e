"""A realistic backfill corpus that does not repeat, generated from a fixed seed.

`bench/throughput.grow_transcript` writes renumbered copies of the same 377 KB
of fixture transcripts: zstd -3 finds each copy inside its window and runs at
about 5 GB/s over it, so the one piece of real work in the old baseline (read +
zstd) is almost free there and every ratio against it is inflated. Real
transcripts do not repeat like that.

`write_corpus` keeps the fixtures' shape (line types, keys, nesting, sizes) and
changes everything a new session would change:

- every `uuid` is new, `parentUuid` points at the previous line, `sessionId`
  is the synthetic session's, timestamps move forward;
- message / tool-use / request IDs get new random bodies, opaque tokens
  (signatures, hashes: no whitespace, no "/") new random base64 of the same
  length;
- every string with whitespace (prompts, answers, tool input and output,
  code) is replaced by new text of about the same length from a word-level
  Markov chain over the fixtures' own texts (each word followed by one of the
  words that follows it somewhere in the fixtures, with a random jump now and
  then), whitespace and newlines kept with their word, so the characters, the
  quotes and backslashes and the line structure stay those of transcripts
  while no whole sentence repeats;
- `secret_share` of the lines get one planted secret, cycling through every
  default redaction pattern of confabd/redact.py (value patterns in text,
  the sensitive-field pattern as a JSON key); each has a fresh random body;
- a few lines (`non_ascii_share`) get non-ASCII words mixed in, a few
  (`escape_share`) carry escape-heavy tool output (JSON in JSON, Windows
  paths, ANSI colour codes, which JSON escapes as \\u001b).

The same (seed, size, shares) always gives the same bytes.
"""

from __future__ import annotations

import json
import random
import re
import string
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

SEED = 20261201
SESSION_ID = "5a1e0000-0000-4000-8000-000000000300"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_PREFIXED_ID = re.compile(r"(toolu|srvtoolu|msg|req)_([A-Za-z0-9]{8,})")
_WORD = re.compile(r"\S+\s*")
_ALNUM = string.ascii_letters + string.digits
_BASE64 = _ALNUM + "+/"
_HEX = "0123456789abcdef"
_JUMP = 0.1  # chance of leaving the chain for a random word: breaks the fixtures' long unique runs

# Words of other scripts and typography, as real prompts and answers have them.
_NON_ASCII = ("café", "naïve", "Größe", "Übersicht", "déjà-vu", "–", "—", "“quoted”", "…", "→", "✓", "✗",
              "日本語の", "テスト", "中文", "변수", "Привет", "функция", "λ", "π≈3.14", "°C", "€42", "🚀", "🙂",
              "👍", "ñandú", "façade", "Ελληνικά")


@dataclass
class Corpus:
    """What was written, and what the checks need to know about it."""

    path: str
    size: int = 0
    lines: int = 0
    secret_lines: int = 0
    non_ascii_lines: int = 0
    escape_lines: int = 0
    # (1-based line number, a part of the planted secret that redaction must remove)
    secrets: list[tuple[int, str]] = field(default_factory=list)


def _fixture_lines(transcripts: Path) -> list[dict]:
    lines = []
    for path in sorted(transcripts.glob("*.jsonl")):
        lines.extend(json.loads(line) for line in path.read_bytes().splitlines() if line.strip())
    return lines


def _texts(value, out: list[str]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _texts(item, out)
    elif isinstance(value, list):
        for item in value:
            _texts(item, out)
    elif isinstance(value, str) and len(value) >= 12 and re.search(r"\s", value):
        out.append(value)


class _Chain:
    """Word-level Markov chain (order 1) over the fixtures' texts; a word keeps its trailing whitespace."""

    def __init__(self, texts: list[str], rng: random.Random):
        self.rng = rng
        self.words: list[str] = []
        self.ascii_words: list[str] = []  # lines meant to be ASCII draw only these
        self.follow: dict[str, list[str]] = {}
        for text in texts:
            words = _WORD.findall(text)
            self.words.extend(words)
            self.ascii_words.extend(w for w in words if w.isascii())
            for here, after in zip(words, words[1:]):
                self.follow.setdefault(here, []).append(after)

    def text(self, length: int, non_ascii: bool = False) -> str:
        rng, out, size = self.rng, [], 0
        word = rng.choice(self.words)
        while size < length:
            if non_ascii:
                if rng.random() < 0.08:
                    word = rng.choice(_NON_ASCII) + " "
            elif not word.isascii():
                word = rng.choice(self.ascii_words)
            out.append(word)
            size += len(word)
            nexts = self.follow.get(word)
            word = rng.choice(nexts) if nexts and rng.random() >= _JUMP else rng.choice(self.words)
        return "".join(out).rstrip() or "ok"


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


def _secret(kind: int, rng: random.Random) -> tuple[str, str]:
    """(text to plant, the part that must not survive redaction) for value pattern number `kind`."""
    r = lambda n, a=_ALNUM: _rand(rng, a, n)  # noqa: E731 - local shorthand
    body = r(24)
    makers = (
        lambda: ("cfb_" + body + r(16), body),
        lambda: ("sk-ant-api03-" + body + r(71), body),
        lambda: ("sk-proj-" + body + r(24), body),
        lambda: ("AKIA" + r(16, string.ascii_uppercase + string.digits),) * 2,
        lambda: ("aws_secret_access_key = " + body + r(16), body),
        lambda: ('export AWS_SECRET_ACCESS_KEY="' + body + r(16) + '"', body),
        lambda: ("ghp_" + body + r(12), body),
        lambda: ("github_pat_11A" + body + r(40), body),
        lambda: ("gho_" + body + r(12), body),
        lambda: ("ghu_" + body + r(12), body),
        lambda: ("ghs_" + body + r(12), body),
        lambda: ("ghr_" + body + r(12), body),
        lambda: ("eyJhbGciOiJIUzI1NiJ9.eyJ" + body + ".c2ln" + r(30), body),
        lambda: (_private_key(rng, body), body),
        lambda: (f"postgres://app:{body}@db.internal:5432/app", body),
        lambda: (f"mysql://root:{body}@localhost/shop", body),
        lambda: (f"mongodb+srv://me:{body}@cluster0.example.net/db", body),
        lambda: (f"redis://:{body}@cache:6379/0", body),
        lambda: (f"https://deploy:{body}@git.example.com/repo.git", body),
        lambda: (f"xoxb-{r(11, string.digits)}-{body}", body),
        lambda: (f"xoxe-1-{body}", body),
        lambda: (f"xapp-1-A0{body}", body),
        lambda: ("sk_live_" + body, body),
        lambda: ("rk_test_" + body, body),
        lambda: ("AIza" + body + r(11), body),
        lambda: ("SK" + r(32, _HEX),) * 2,
        lambda: ("SG." + body[:22] + "." + body + r(19), body),
        lambda: (r(32, _HEX) + "-us12",) * 2,
        lambda: ("npm_" + body + r(12), body),
        lambda: ("pypi-AgEIcHlwaS5vcmc" + body + r(60), body),
        lambda: ("Authorization: Bearer " + body + r(8), body),
    )
    return makers[kind % len(makers)]()


def _private_key(rng: random.Random, body: str) -> str:
    kind = rng.choice(["", "RSA ", "EC ", "OPENSSH "])
    return (f"-----BEGIN {kind}PRIVATE KEY-----\nMII{body}\n{_rand(rng, _BASE64, 64)}\n"
            f"-----END {kind}PRIVATE KEY-----")


SECRET_KINDS = 31  # the value patterns above, plus one sensitive JSON field (kind 31)
_FIELD_NAMES = ("password", "api_key", "token", "secret", "access_token", "credentials", "private_key")


class _Writer:
    def __init__(self, transcripts: Path, seed: int, secret_share: float, non_ascii_share: float,
                 escape_share: float):
        self.rng = random.Random(seed)
        self.templates = _fixture_lines(transcripts)
        texts: list[str] = []
        for line in self.templates:
            _texts(line, texts)
        self.chain = _Chain(texts, self.rng)
        self.shares = (secret_share, non_ascii_share, escape_share)
        self.parent: str | None = None
        self.clock = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
        self.secret_kind = 0

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _string(self, key, value: str, non_ascii: bool) -> str:
        if key == "sessionId":
            return SESSION_ID
        if _UUID.fullmatch(value):
            return self._uuid()
        if _ISO_TIME.fullmatch(value):
            return self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        m = _PREFIXED_ID.fullmatch(value)
        if m:
            return f"{m.group(1)}_{_rand(self.rng, _ALNUM, len(m.group(2)))}"
        if re.search(r"\s", value):
            return self.chain.text(len(value), non_ascii) if len(value) >= 12 else value
        if len(value) >= 32 and "/" not in value:  # signatures, hashes: opaque, random in real life
            return _rand(self.rng, _BASE64, len(value))
        return value

    def _walk(self, value, key, non_ascii: bool):
        if isinstance(value, dict):
            return {k: self._walk(v, k, non_ascii) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v, key, non_ascii) for v in value]
        if isinstance(value, str):
            return self._string(key, value, non_ascii)
        return value

    def line(self, number: int, corpus: Corpus) -> bytes:
        rng = self.rng
        secret_share, non_ascii_share, escape_share = self.shares
        template = rng.choice(self.templates)
        non_ascii = rng.random() < non_ascii_share
        self.clock += timedelta(milliseconds=rng.randint(50, 4000))
        doc = self._walk(template, None, non_ascii)
        if "uuid" in doc:
            doc["uuid"] = self._uuid()
            doc["parentUuid"] = self.parent
            self.parent = doc["uuid"]
        if rng.random() < escape_share:
            doc["toolUseResult"] = {"stdout": self._escape_heavy(), "stderr": "", "interrupted": False}
            corpus.escape_lines += 1
        if rng.random() < secret_share:
            self._plant(doc, number, corpus)
        corpus.non_ascii_lines += non_ascii
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    def _escape_heavy(self) -> str:
        rng = self.rng
        inner = {"path": "C:\\Users\\dev\\proj\\src\\" + self.chain.text(20).split()[0], "ok": True,
                 "log": self.chain.text(200)}
        nested = json.dumps(json.dumps(inner))  # JSON in JSON in JSON: every quote escaped twice
        colour = "".join(f"\x1b[3{rng.randint(1, 7)}m{self.chain.text(30)}\x1b[0m\t\r\n" for _ in range(8))
        return nested + "\n" + colour

    def _plant(self, doc: dict, number: int, corpus: Corpus) -> None:
        kind = self.secret_kind % (SECRET_KINDS + 1)
        self.secret_kind += 1
        if kind == SECRET_KINDS:
            value = _rand(self.rng, _ALNUM, 24)
            target = doc.get("message") if isinstance(doc.get("message"), dict) else doc
            target[self.rng.choice(_FIELD_NAMES)] = value
            corpus.secrets.append((number, value))
        else:
            text, must_vanish = _secret(kind, self.rng)
            self._insert_text(doc, text)
            corpus.secrets.append((number, must_vanish))
        corpus.secret_lines += 1

    def _insert_text(self, doc: dict, secret: str) -> None:
        """Into the longest string with whitespace (prose) of the line, at a word boundary."""
        best: list = [None, None, -1]

        def find(node):
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(v, str) and " " in v and len(v) > best[2]:
                    best[:] = [node, k, len(v)]
                elif isinstance(v, (dict, list)):
                    find(v)

        find(doc)
        node, key, _ = best
        if node is None:
            doc["content"] = secret
            return
        words = node[key].split(" ")
        at = self.rng.randrange(len(words) + 1)
        node[key] = " ".join(words[:at] + [secret] + words[at:])


def write_corpus(path: str, size: int, transcripts: Path, *, seed: int = SEED, secret_share: float = 0.0,
                 non_ascii_share: float = 0.13, escape_share: float = 0.005) -> Corpus:
    """Write at least `size` bytes of complete transcript lines to `path`."""
    writer = _Writer(transcripts, seed, secret_share, non_ascii_share, escape_share)
    corpus = Corpus(path)
    with open(path, "wb") as out:
        while corpus.size < size:
            data = writer.line(corpus.lines + 1, corpus)
            out.write(data)
            corpus.size += len(data)
            corpus.lines += 1
    return corpus
