"""What the backend stores is the same, line for line and byte for byte, whichever way a chunk
is encoded: each block encoded once by the reader and streamed (the HTTP sink's path), or the
whole chunk encoded at upload (the path without `encode_lines`, as before issue 15).

The corpus mixes the fixtures' lines with the lines that could go wrong: non-ASCII, escapes,
JSON in JSON, a raw control byte, a line that is not UTF-8, a trailing CR, empty lines, secrets
of several patterns (so redaction changes some blocks and not others). Small read blocks and a
small budget make many blocks per chunk, a block that overflows the chunk, and many chunks.
"""

from __future__ import annotations

import json
import os

import pytest

from confabd import transcript
from confabd.engine import SessionSync
from confabd.redact import Redactor
from confabd.sinks.http import HttpSink
from tests.data import TRANSCRIPTS
from tests.fakebackend import FakeBackend

EID = "encoding-corpus"
BUDGET = 96 * 1024  # over the fixtures' longest line (57 KB) escaped
SECRETS = ("ghp_" + "a1B2" * 9, "AKIA" + "ABCDEFGHIJKLMNOP", "sk-ant-api03-" + "x" * 90,
           "postgres://app:hunter2hunter2@db.internal/app")


def corpus() -> bytes:
    lines: list[bytes] = []
    for path in sorted(TRANSCRIPTS.glob("*.jsonl")) * 3:
        lines += path.read_bytes().split(b"\n")[:-1]
    odd = [
        json.dumps({"type": "user", "text": "naïve café — 日本語 ✓"}, ensure_ascii=False).encode(),
        json.dumps({"type": "assistant", "json": json.dumps({"a": '"\\q"', "p": "C:\\Users\\x"})}).encode(),
        b'{"type":"x","raw":"\x01 a raw control byte"}',
        b'{"type":"x","bad":"\xff\xfe not utf-8"}',
        b'{"type":"x","crlf":true}\r',
        b"",
        b"not json at all \\ \"",
    ]
    out = []
    for index, line in enumerate(lines):
        out.append(line)
        if index % 7 == 0:
            out.append(odd[index // 7 % len(odd)])
        if index % 29 == 0:
            secret = SECRETS[index // 29 % len(SECRETS)]
            out.append(json.dumps({"type": "user", "message": {"content": f"use {secret} please"}}).encode())
    return b"\n".join(out) + b"\n"


class _WholeChunkSink(HttpSink):
    """The HTTP sink without `encode_lines`: the engine falls back to encoding each chunk at upload."""

    encode_lines = None


def save(backend: FakeBackend, path, sink_class, redactor) -> list[str]:
    sink = sink_class(backend.url, backend.api_key)
    try:
        engine = SessionSync(EID, str(path), sink, budget=BUDGET,
                             redact=redactor.redact_line if redactor else None)
        engine.hurry = True
        engine.sync_until_idle()
    finally:
        sink.close()
    return backend.lines(EID, path.name)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(transcript, "READ_BLOCK", 8192)


@pytest.mark.parametrize("redaction", [False, True], ids=["redaction-off", "redaction-on"])
def test_streamed_blocks_store_exactly_what_whole_chunks_store(tmp_path, small_blocks, redaction):
    path = tmp_path / f"{EID}.jsonl"
    data = corpus()
    path.write_bytes(data)
    redactor = Redactor.from_config({"enabled": True}) if redaction else None
    expected_lines = [(redactor.redact_line(line) if redactor else line).decode("utf-8", "replace")
                      for line in data.split(b"\n")[:-1]]
    stored = {}
    for name, sink_class in (("blocks", HttpSink), ("whole", _WholeChunkSink)):
        with FakeBackend() as backend:
            stored[name] = save(backend, path, sink_class, redactor)
            chunks = backend.chunk_counts(EID)[path.name]
        assert chunks > 10, f"{name}: the corpus should take many chunks, took {chunks}"
    assert stored["blocks"] == stored["whole"] == expected_lines
    if redaction:
        assert not any(secret in line for line in stored["blocks"] for secret in SECRETS)
    else:
        assert "\n".join(stored["blocks"]).encode() + b"\n" == data.replace(b"\xff\xfe", "\ufffd\ufffd".encode())


def test_blocks_are_encoded_once_and_charged_exactly(tmp_path, small_blocks):
    """The reader's `Batch.encoded` is the sink's encoding of a prefix of the batch's lines."""
    path = tmp_path / f"{EID}.jsonl"
    path.write_bytes(corpus())
    sink = HttpSink("http://127.0.0.1:9", "cfb_" + "k" * 40)
    batch = transcript.LineReader(str(path)).read_batch(1, BUDGET, None, lambda lines, _block: sink.encode_lines(lines))
    covered = sum(count for count, _ in batch.encoded)
    assert 1 < len(batch.encoded) and 0 < covered <= len(batch.lines)
    start = 0
    for count, body in batch.encoded:
        assert body == sink.encode_lines(batch.lines[start:start + count])
        start += count
    assert os.path.getsize(path) > batch.end_offset
