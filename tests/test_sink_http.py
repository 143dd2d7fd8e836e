"""HttpSink against the real fake backend (tests/fakebackend.py).

Every row of protocol.md's status table is provoked for real (or injected the
way a proxy in front of the server would answer) and must map to exactly one
base.py error class, with a message that never contains the API key.
"""

from __future__ import annotations

import email.utils
import socket
import time

import pytest

from confabd.errors import ConfigError
from confabd.records import ChunkMetadata, InitMetadata, InitRequest
from confabd.sinks.base import (
    AuthFailed,
    Chunk,
    PayloadTooLarge,
    PositionMismatch,
    RequestRejected,
    SessionGone,
    SinkError,
    Unavailable,
)
from confabd.sinks.http import HttpSink, parse_retry_after
from tests.fakebackend import USER_AGENT_RE, FakeBackend

KEY = "cfb_" + "K" * 40
OTHER_KEY = "cfb_" + "O" * 40
EID = "0b3c5e2a-1111-2222-3333-444455556666"
NAME = EID + ".jsonl"


@pytest.fixture
def backend():
    with FakeBackend(api_keys=(KEY, OTHER_KEY)) as server:
        yield server


@pytest.fixture
def sink(backend):
    with HttpSink(backend.url, KEY, timeout=10.0) as s:
        yield s


def init(sink, eid=EID):
    return sink.init(InitRequest(eid, f"/home/u/.claude/projects/p/{eid}.jsonl", InitMetadata(cwd="/home/u/p")))


def chunk(session_id, first_line, lines, name=NAME, file_type="transcript", metadata=None):
    return Chunk(session_id, name, file_type, first_line, lines, metadata)


def raises(exc_type, call, *args):
    """Run call(*args), expect exc_type, and check the key is nowhere in the message."""
    with pytest.raises(exc_type) as info:
        call(*args)
    assert KEY not in str(info.value) and OTHER_KEY not in str(info.value)
    assert KEY not in repr(info.value)
    return info.value


# ---------------------------------------------------------------------------
# The happy path.


def test_init_chunk_event_round_trip(backend, sink):
    session = init(sink)
    assert session.files == {}
    meta = ChunkMetadata(summary="a summary", first_user_message="hello")
    assert sink.upload_chunk(chunk(session.session_id, 1, [b'{"n":1}', b'{"n":2}'], metadata=meta)) == 2
    assert sink.upload_chunk(chunk(session.session_id, 3, [b'{"n":3}'])) == 3

    again = init(sink)
    assert again.session_id == session.session_id
    assert again.files[NAME].last_synced_line == 3
    assert backend.lines(EID, NAME) == ['{"n":1}', '{"n":2}', '{"n":3}']
    assert backend.metadata(EID)["summary"] == "a summary"

    sink.send_event(session.session_id, "session_end", "2026-11-24T10:00:00Z", {"reason": "exit"})
    assert backend.events(EID) == [
        {"event_type": "session_end", "timestamp": "2026-11-24T10:00:00Z", "payload": {"reason": "exit"}}
    ]


def test_headers_and_one_keep_alive_connection(backend, sink):
    session = init(sink)
    for n in range(1, 6):
        sink.upload_chunk(chunk(session.session_id, n, [b"{}"]))
    log = backend.requests_log()
    assert all(e["status"] == 200 for e in log)
    assert all(USER_AGENT_RE.match(e["user_agent"]) for e in log)
    assert all(e["content_type"] == "application/json" for e in log)
    assert backend.counts()["connections"] == 1


def test_zstd_only_for_bodies_of_1kib_or_more(backend, sink):
    session = init(sink)
    big = [b'{"text":"' + b"x" * 200 + b'"}'] * 20
    sink.upload_chunk(chunk(session.session_id, 1, [b'{"small":true}']))
    sink.upload_chunk(chunk(session.session_id, 2, big))
    small_log, big_log = [e for e in backend.requests_log() if e["endpoint"] == "chunk"]
    assert small_log["content_encoding"] is None
    assert big_log["content_encoding"] == "zstd"
    assert big_log["body_size"] < big_log["decoded_size"]
    assert backend.lines(EID, NAME)[1:] == [line.decode() for line in big]


def test_lines_go_out_exactly_cr_kept_and_invalid_utf8_replaced(backend, sink):
    session = init(sink)
    lines = [b'{"a":"caf\xc3\xa9"}', b'{"crlf":1}\r', b"", b'{"bad":"\xff\xfe"}']
    sink.upload_chunk(chunk(session.session_id, 1, lines))
    assert backend.lines(EID, NAME) == ['{"a":"café"}', '{"crlf":1}\r', "", '{"bad":"\ufffd\ufffd"}']
    assert sink.replaced_lines == 1
    assert not any(e["lossy_utf8"] for e in backend.requests_log())  # we sent valid JSON


# ---------------------------------------------------------------------------
# Status mapping, one row of protocol.md's table at a time.


def test_position_mismatch_carries_the_expected_line(sink):
    session = init(sink)
    sink.upload_chunk(chunk(session.session_id, 1, [b"1", b"2"]))
    gap = raises(PositionMismatch, sink.upload_chunk, chunk(session.session_id, 5, [b"5"]))
    assert gap.expected_first_line == 3 and gap.status == 400
    replay = raises(PositionMismatch, sink.upload_chunk, chunk(session.session_id, 1, [b"1"]))
    assert replay.expected_first_line == 3
    assert "first_line must be 3 (got 1)" in str(replay)


def test_other_400_is_request_rejected(sink):
    session = init(sink)
    error = raises(RequestRejected, sink.upload_chunk, chunk(session.session_id, 1, [b"x"], file_type="todo"))
    assert error.status == 400 and "file_type" in str(error) and "/api/v1/sync/chunk" in str(error)
    error = raises(RequestRejected, sink.send_event, session.session_id, "session_start", "2026-11-24T10:00:00Z", {})
    assert "event_type" in str(error)


def test_401_wrong_key(backend):
    with HttpSink(backend.url, "cfb_" + "w" * 40) as sink:
        error = raises(AuthFailed, init, sink)
    assert error.status == 401 and "cfb_" not in str(error)


def test_403_someone_elses_session(backend, sink):
    session = init(sink)
    with HttpSink(backend.url, OTHER_KEY) as other:
        error = raises(AuthFailed, other.upload_chunk, chunk(session.session_id, 1, [b"x"]))
    assert error.status == 403


def test_404_after_the_owner_deleted_the_session(backend, sink):
    session = init(sink)
    backend.delete_session(EID)
    error = raises(SessionGone, sink.upload_chunk, chunk(session.session_id, 1, [b"x"]))
    assert error.status == 404


def test_413_from_a_proxy(backend, sink):
    session = init(sink)
    backend.fail_next(1, 413, path="chunk", message="Request Entity Too Large")
    error = raises(PayloadTooLarge, sink.upload_chunk, chunk(session.session_id, 1, [b"x"]))
    assert error.status == 413


def test_415_is_request_rejected(backend, sink):
    # The sink cannot send a wrong encoding through its API; inject the answer.
    session = init(sink)
    backend.fail_next(1, 415, path="chunk", message="Unsupported Content-Encoding: gzip")
    error = raises(RequestRejected, sink.upload_chunk, chunk(session.session_id, 1, [b"x"]))
    assert error.status == 415 and "Unsupported Content-Encoding" in str(error)


@pytest.mark.parametrize("retry_after, expected", [(None, None), ("7", 7.0)])
def test_429_with_and_without_retry_after(backend, sink, retry_after, expected):
    backend.fail_next(1, 429, retry_after=retry_after, path="init")
    error = raises(Unavailable, init, sink)
    assert error.status == 429 and error.retry_after == expected


def test_429_with_an_http_date(backend, sink):
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    backend.fail_next(1, 429, retry_after=when, path="init")
    error = raises(Unavailable, init, sink)
    assert 100 < error.retry_after <= 120


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_unavailable(backend, sink, status):
    backend.fail_next(1, status, path="init")
    error = raises(Unavailable, init, sink)
    assert error.status == status and f"HTTP {status}" in str(error)
    assert init(sink).session_id  # no retry inside the sink; the next call works


def test_timeout_is_unavailable_and_the_late_chunk_still_commits(backend):
    with HttpSink(backend.url, KEY, timeout=0.3) as sink:
        session = init(sink)
        backend.delay_next(1, 1.5, path="chunk")
        error = raises(Unavailable, sink.upload_chunk, chunk(session.session_id, 1, [b"a", b"b"]))
        assert error.status is None
    backend.wait_for(lambda: backend.lines(EID, NAME) == ["a", "b"], timeout=10)


def test_answer_lost_after_commit_then_init_tells_the_truth(backend, sink):
    session = init(sink)
    backend.commit_then_drop_next(1, path="chunk")
    error = raises(Unavailable, sink.upload_chunk, chunk(session.session_id, 1, [b"a", b"b", b"c"]))
    assert error.status is None
    assert init(sink).files[NAME].last_synced_line == 3
    assert sink.upload_chunk(chunk(session.session_id, 4, [b"d"])) == 4


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_connection_refused_is_unavailable(scheme):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with HttpSink(f"{scheme}://127.0.0.1:{port}", KEY) as sink:
        error = raises(Unavailable, init, sink)
    # The cause in two words, not urllib3's 300 characters of repr (issue 13)
    assert error.status is None and error.unreachable == "connection refused"
    assert str(error) == f"cannot reach {scheme}://127.0.0.1:{port} (connection refused)"


def test_the_key_is_scrubbed_even_from_server_text(backend, sink):
    backend.fail_next(1, 500, path="init", message=f"internal error for Bearer {KEY}")
    error = raises(Unavailable, init, sink)
    assert "<api key>" in str(error)


def test_long_server_error_text_is_cut(backend, sink):
    backend.fail_next(1, 400, path="init", message="y" * 5000)
    error = raises(RequestRejected, init, sink)
    assert len(str(error)) < 400


# ---------------------------------------------------------------------------
# Construction.


def test_plain_http_only_for_loopback():
    with pytest.raises(ConfigError):
        HttpSink("http://example.com", KEY)
    HttpSink("https://example.com/", KEY).close()
    HttpSink("http://localhost:8080", KEY).close()
    HttpSink("http://[::1]:8080", KEY).close()


def test_the_key_is_not_in_the_sinks_repr_or_session_headers():
    sink = HttpSink("https://example.com", KEY)
    try:
        assert KEY not in repr(sink)
        assert KEY not in repr(sink._session.headers) and KEY not in repr(sink._session.auth)
    finally:
        sink.close()


def test_parse_retry_after():
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("nan") is None and parse_retry_after("inf") is None
    assert parse_retry_after("-4") is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_every_sink_error_is_a_sink_error():
    for cls in (AuthFailed, PayloadTooLarge, PositionMismatch, RequestRejected, SessionGone, Unavailable):
        assert issubclass(cls, SinkError)
