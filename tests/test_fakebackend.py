"""The fake backend enforces protocol.md: prove each rule with a plain HTTP client.

These tests use ``requests`` + ``zstandard`` directly (not confabd's client),
so a rule the fake forgets cannot hide behind a matching client bug.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import zstandard

from tests.fakebackend import DEFAULT_API_KEY, FakeBackend

pytestmark = pytest.mark.timeout(60)

UA = "confabd/0.1.0 (linux; x86_64)"
OTHER_KEY = "cfb_" + "b" * 40
TRANSCRIPT = "sess-1.jsonl"


@pytest.fixture
def backend():
    with FakeBackend() as b:
        yield b


@pytest.fixture
def http():
    with requests.Session() as s:
        yield s


def post(http, backend, endpoint, body, *, key=DEFAULT_API_KEY, zstd=False, headers=None, timeout=10):
    """POST a JSON body to /api/v1/sync/<endpoint>, optionally zstd-compressed."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", "User-Agent": UA}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    if zstd:
        data = zstandard.ZstdCompressor().compress(data)
        hdrs["Content-Encoding"] = "zstd"
    hdrs.update(headers or {})
    return http.post(f"{backend.url}/api/v1/sync/{endpoint}", data=data, headers=hdrs, timeout=timeout)


def init(http, backend, external_id="sess-1", key=DEFAULT_API_KEY, **extra):
    body = {"external_id": external_id, "transcript_path": f"/home/u/.claude/projects/p/{external_id}.jsonl"}
    body.update(extra)
    return post(http, backend, "init", body, key=key)


def chunk(http, backend, session_id, first_line, lines, *, file_name=TRANSCRIPT, file_type="transcript",
          key=DEFAULT_API_KEY, metadata=None, **kw):
    body = {"session_id": session_id, "file_name": file_name, "file_type": file_type,
            "first_line": first_line, "lines": lines}
    if metadata is not None:
        body["metadata"] = metadata
    return post(http, backend, "chunk", body, key=key, **kw)


def event(http, backend, session_id, event_type="session_end", key=DEFAULT_API_KEY, **extra):
    body = {"session_id": session_id, "event_type": event_type, "timestamp": "2026-11-24T10:00:00Z",
            "payload": {"reason": "exit"}}
    body.update(extra)
    return post(http, backend, "event", body, key=key)


def new_session(http, backend, external_id="sess-1"):
    r = init(http, backend, external_id)
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


def assert_error(r, status, message=None, prefix=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json"
    err = r.json()["error"]
    if message is not None:
        assert err == message
    if prefix is not None:
        assert err.startswith(prefix), err


# ---- auth ------------------------------------------------------------------------


def test_missing_or_unknown_key_is_401(backend, http):
    assert_error(init(http, backend, key=None), 401)
    assert_error(init(http, backend, key="cfb_" + "z" * 40), 401)
    assert_error(post(http, backend, "init", {}, key=None, headers={"Authorization": "Basic abc"}), 401)


def test_other_users_session_is_403_and_revoked_key_401(backend, http):
    sid = new_session(http, backend)
    backend.add_api_key(OTHER_KEY)
    assert_error(chunk(http, backend, sid, 1, ["a"], key=OTHER_KEY), 403)
    assert_error(event(http, backend, sid, key=OTHER_KEY), 403)
    # init by the other user is a different session, not a 403
    other = init(http, backend, key=OTHER_KEY).json()["session_id"]
    assert other != sid
    backend.revoke_api_key(DEFAULT_API_KEY)
    assert_error(chunk(http, backend, sid, 1, ["a"]), 401)


def test_keys_of_the_same_user_share_sessions(backend, http):
    sid = new_session(http, backend)
    backend.add_api_key(OTHER_KEY, user=DEFAULT_API_KEY)
    assert init(http, backend, key=OTHER_KEY).json()["session_id"] == sid
    assert chunk(http, backend, sid, 1, ["a"], key=OTHER_KEY).status_code == 200


# ---- headers and bodies ----------------------------------------------------------------


def test_content_type_and_encoding_are_415(backend, http):
    body = {"external_id": "x", "transcript_path": "/x.jsonl"}
    assert_error(post(http, backend, "init", body, headers={"Content-Type": "text/plain"}), 415)
    r = post(http, backend, "init", body, headers={"Content-Encoding": "gzip"})
    assert_error(r, 415, "Unsupported Content-Encoding: gzip")
    assert post(http, backend, "init", body, headers={"Content-Type": "application/json; charset=utf-8"}).ok


def test_zstd_body_is_accepted(backend, http):
    sid = new_session(http, backend)
    lines = [json.dumps({"type": "user", "n": i, "text": "x" * 100}) for i in range(50)]
    r = chunk(http, backend, sid, 1, lines, zstd=True)
    assert r.json() == {"last_synced_line": 50}
    assert backend.lines("sess-1", TRANSCRIPT) == lines
    entry = backend.requests_log()[-1]
    assert entry["content_encoding"] == "zstd" and entry["decoded_size"] > entry["body_size"]


def test_body_over_16_mib_after_decompression_is_400(backend, http):
    sid = new_session(http, backend)
    line = "x" * (1024 * 1024)
    r = chunk(http, backend, sid, 1, [line] * 17, zstd=True)  # tiny on the wire, 17 MiB decoded
    assert_error(r, 400, "Invalid request body")
    assert backend.lines("sess-1", TRANSCRIPT) == []
    assert chunk(http, backend, sid, 1, [line] * 15, zstd=True).json() == {"last_synced_line": 15}


def test_identity_body_over_limit_is_400_and_connection_survives():
    with FakeBackend(max_body=4096) as b, requests.Session() as http:
        sid = new_session(http, b)
        assert_error(chunk(http, b, sid, 1, ["y" * 5000]), 400, "Invalid request body")
        assert chunk(http, b, sid, 1, ["y" * 3000]).json() == {"last_synced_line": 1}


def test_malformed_json_and_wrong_types_are_400(backend, http):
    assert_error(post(http, backend, "init", b"{not json"), 400, "Invalid request body")
    assert_error(post(http, backend, "init", b"\x28\xb5\x2f\xfd garbage", zstd=False,
                      headers={"Content-Encoding": "zstd"}), 400, "Invalid request body")
    sid = new_session(http, backend)
    r = post(http, backend, "chunk", {"session_id": sid, "file_name": TRANSCRIPT, "file_type": "transcript",
                                      "first_line": "1", "lines": ["a"]})
    assert_error(r, 400, "Invalid request body")


def test_truncated_zstd_frame_is_400(backend, http):
    sid = new_session(http, backend)
    body = json.dumps({"session_id": sid, "file_name": TRANSCRIPT, "file_type": "transcript",
                       "first_line": 1, "lines": ["a"] * 500}).encode()
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(body)
    r = post(http, backend, "chunk", frame[:-2], headers={"Content-Encoding": "zstd"})
    assert_error(r, 400, "Invalid request body")
    assert post(http, backend, "chunk", frame, headers={"Content-Encoding": "zstd"}).ok


def test_chunked_transfer_encoding_body(backend, http):
    sid = new_session(http, backend)
    body = json.dumps({"session_id": sid, "file_name": TRANSCRIPT, "file_type": "transcript",
                       "first_line": 1, "lines": ["a", "b"]}).encode()
    pieces = iter([body[:10], body[10:]])  # a generator body makes requests send it chunked
    r = http.post(f"{backend.url}/api/v1/sync/chunk", data=pieces,
                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {DEFAULT_API_KEY}"})
    assert r.json() == {"last_synced_line": 2}
    assert init(http, backend).ok  # and the connection is still in sync


def test_init_requires_external_id_and_transcript_path(backend, http):
    assert_error(post(http, backend, "init", {"transcript_path": "/x.jsonl"}), 400, "external_id is required")
    assert_error(post(http, backend, "init", {"external_id": "x"}), 400, "transcript_path is required")


def test_unknown_path_is_404(backend, http):
    r = http.post(f"{backend.url}/api/v1/nope", data=b"{}", headers={"Content-Type": "application/json"})
    assert_error(r, 404)


# ---- chunk rules -------------------------------------------------------------------


def test_contiguity_message_is_exact(backend, http):
    sid = new_session(http, backend)
    assert chunk(http, backend, sid, 1, ["a", "b"]).json() == {"last_synced_line": 2}
    r = chunk(http, backend, sid, 5, ["e"])
    assert_error(r, 400, "first_line must be 3 (got 5) - chunks must be contiguous")
    assert_error(chunk(http, backend, sid, 1, ["a"]), 400, "first_line must be 3 (got 1) - chunks must be contiguous")
    assert backend.lines("sess-1", TRANSCRIPT) == ["a", "b"]
    # a new file starts at 1
    assert_error(chunk(http, backend, sid, 2, ["x"], file_name="agent-a1.jsonl", file_type="agent"), 400,
                 "first_line must be 1 (got 2) - chunks must be contiguous")


def test_empty_lines_and_first_line_below_one_are_400(backend, http):
    sid = new_session(http, backend)
    assert_error(chunk(http, backend, sid, 1, []), 400)
    assert_error(chunk(http, backend, sid, 0, ["a"]), 400)
    assert_error(chunk(http, backend, sid, -3, ["a"]), 400)
    assert backend.files("sess-1") == {}


def test_file_name_and_file_type_rules(backend, http):
    sid = new_session(http, backend)
    assert_error(chunk(http, backend, sid, 1, ["a"], file_type="todo"), 400)
    assert_error(chunk(http, backend, sid, 1, ["a"], file_name="n" * 509 + ".jsonl"), 400)  # 515 bytes
    assert_error(chunk(http, backend, sid, 1, ["a"], file_name="é" * 257), 400)  # 514 bytes, 257 chars
    for bad in ("../x.jsonl", "/x.jsonl", "a//x.jsonl", "a/./x.jsonl", "a\\x.jsonl", "dir/"):
        assert_error(chunk(http, backend, sid, 1, ["a"], file_name=bad), 400)
    # slashes are the server's key segments (Cursor's subagents/<id>.jsonl, Claude's workflow files)
    assert chunk(http, backend, sid, 1, ["s"], file_name="subagents/x.jsonl", file_type="agent").ok
    assert chunk(http, backend, sid, 1, ["p"], file_name="subagents/workflows/r1/agent-x.jsonl", file_type="agent").ok
    assert chunk(http, backend, sid, 1, ["a"], file_name="n" * 506 + ".jsonl").ok  # exactly 512 bytes
    assert chunk(http, backend, sid, 1, ["w"], file_name="wf.jsonl", file_type="workflow_journal").ok
    assert chunk(http, backend, sid, 1, ["g"], file_name="agent-a1.jsonl", file_type="agent").ok
    assert backend.file_types("sess-1")["agent-a1.jsonl"] == "agent"


def test_unknown_session_is_404(backend, http):
    assert_error(chunk(http, backend, "00000000-0000-0000-0000-000000000000", 1, ["a"]), 404)


def test_metadata_limits_fail_the_whole_chunk(backend, http):
    sid = new_session(http, backend)
    assert_error(chunk(http, backend, sid, 1, ["a"], metadata={"summary": "s" * 2049}), 400)
    assert_error(chunk(http, backend, sid, 1, ["a"], metadata={"first_user_message": "m" * 8193}), 400)
    # bytes of UTF-8, as the server's Go len() counts: 1,025 'é' are 2,050 bytes
    assert_error(chunk(http, backend, sid, 1, ["a"], metadata={"summary": "é" * 1025}), 400)
    assert_error(chunk(http, backend, sid, 1, ["a"], metadata={"first_user_message": "é" * 4097}), 400)
    assert backend.lines("sess-1", TRANSCRIPT) == []
    meta = {"summary": "é" * 1024, "first_user_message": "m" * 8192, "git_info": {"branch": "main"}}
    assert chunk(http, backend, sid, 1, ["a"], metadata=meta).ok
    assert chunk(http, backend, sid, 2, ["b"], metadata={"summary": ""}).ok  # empty keeps the old value
    got = backend.metadata("sess-1")
    assert got["summary"] == "é" * 1024 and got["git_info"] == {"branch": "main"}


def test_chunk_cap_per_file():
    with FakeBackend(max_chunks_per_file=2) as b, requests.Session() as http:
        sid = new_session(http, b)
        assert chunk(http, b, sid, 1, ["a"]).ok
        assert chunk(http, b, sid, 2, ["b"]).ok
        assert_error(chunk(http, b, sid, 3, ["c"]), 400, prefix="File has too many chunks")
        assert chunk(http, b, sid, 1, ["x"], file_name="agent-a.jsonl", file_type="agent").ok  # per file
        assert b.chunk_counts("sess-1") == {TRANSCRIPT: 2, "agent-a.jsonl": 1}


def test_init_is_idempotent_and_reports_files(backend, http):
    meta = {"cwd": "/home/u/proj", "hostname": "laptop", "git_info": {"branch": "main"}}
    first = init(http, backend, metadata=meta).json()
    assert first["files"] == {}
    sid = first["session_id"]
    chunk(http, backend, sid, 1, ["a", "b", "c"])
    chunk(http, backend, sid, 1, ["z"], file_name="agent-a1b2c3d4.jsonl", file_type="agent")
    again = init(http, backend).json()
    assert again == {"session_id": sid, "files": {TRANSCRIPT: {"last_synced_line": 3},
                                                  "agent-a1b2c3d4.jsonl": {"last_synced_line": 1}}}
    assert backend.session_id("sess-1") == sid
    assert backend.metadata("sess-1")["cwd"] == "/home/u/proj"
    assert backend.file_bytes("sess-1", TRANSCRIPT) == b"a\nb\nc\n"
    assert backend.file_bytes("sess-1", "missing.jsonl") == b""


def test_event_rules(backend, http):
    sid = new_session(http, backend)
    assert_error(event(http, backend, sid, event_type="session_start"), 400)
    assert_error(event(http, backend, sid, timestamp="yesterday"), 400)
    r = event(http, backend, sid)
    assert r.status_code == 200 and r.json() == {"success": True}
    assert backend.events("sess-1") == [
        {"event_type": "session_end", "timestamp": "2026-11-24T10:00:00Z", "payload": {"reason": "exit"}}
    ]


def test_delete_session_gives_404_then_init_creates_new(backend, http):
    sid = new_session(http, backend)
    chunk(http, backend, sid, 1, ["a"])
    backend.delete_session("sess-1")
    assert backend.session_id("sess-1") is None
    assert_error(chunk(http, backend, sid, 2, ["b"]), 404)
    assert_error(event(http, backend, sid), 404)
    fresh = init(http, backend).json()
    assert fresh["session_id"] != sid and fresh["files"] == {}


def test_invalid_utf8_is_accepted_lossily_like_go(backend, http):
    sid = new_session(http, backend)
    body = json.dumps({"session_id": sid, "file_name": TRANSCRIPT, "file_type": "transcript",
                       "first_line": 1, "lines": ["ok \udcff"]}).encode()  # lone-surrogate escape
    assert post(http, backend, "chunk", body).ok
    assert backend.lines("sess-1", TRANSCRIPT) == ["ok \ufffd"]
    assert backend.requests_log()[-1]["lossy_utf8"] is True


# ---- fault injection ------------------------------------------------------------------


def test_fail_next_with_retry_after_skips_processing(backend, http):
    sid = new_session(http, backend)
    backend.fail_next(1, 429, retry_after=7, path="chunk")
    assert init(http, backend).ok  # other endpoints unaffected
    r = chunk(http, backend, sid, 1, ["a"])
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert r.json() == {"error": "injected"}
    assert backend.lines("sess-1", TRANSCRIPT) == []
    assert chunk(http, backend, sid, 1, ["a"]).ok
    backend.fail_next(2, 503)
    assert [init(http, backend).status_code for _ in range(3)] == [503, 503, 200]


def test_delay_next_exceeds_client_timeout_but_still_commits(backend, http):
    sid = new_session(http, backend)
    backend.delay_next(1, 1.0, path="chunk")
    with pytest.raises(requests.exceptions.ReadTimeout):
        chunk(http, backend, sid, 1, ["a", "b"], timeout=0.2)
    backend.wait_for(lambda: backend.lines("sess-1", TRANSCRIPT) == ["a", "b"], timeout=5)
    assert init(http, backend).json()["files"] == {TRANSCRIPT: {"last_synced_line": 2}}


def test_gate_holds_requests_until_released_then_processes_them(backend, http):
    import threading

    sid = new_session(http, backend)
    gate = backend.gate("event")
    answers = []
    sender = threading.Thread(target=lambda: answers.append(event(http, backend, sid)))
    sender.start()
    assert gate.arrived.wait(10)
    assert backend.events("sess-1") == [] and answers == []
    assert chunk(http, backend, sid, 1, ["a"]).ok  # other endpoints are not held
    gate.release()
    sender.join(10)
    assert [a.status_code for a in answers] == [200]
    assert [e["event_type"] for e in backend.events("sess-1")] == ["session_end"]
    assert event(http, backend, sid).ok  # released: later requests pass at once


def test_commit_then_drop_next(backend, http):
    sid = new_session(http, backend)
    backend.commit_then_drop_next(1)
    with pytest.raises(requests.exceptions.ConnectionError):
        chunk(http, backend, sid, 1, ["a", "b", "c"])
    assert init(http, backend).json()["files"] == {TRANSCRIPT: {"last_synced_line": 3}}
    assert chunk(http, backend, sid, 4, ["d"]).json() == {"last_synced_line": 4}
    assert backend.counts()["dropped"] == 1


def test_wait_for_reports_what_it_saw(backend):
    with pytest.raises(AssertionError, match="not met within"):
        backend.wait_for(lambda: backend.lines("nope", "x"), timeout=0.1)


# ---- connections --------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(backend, http):
    sid = new_session(http, backend)
    assert chunk(http, backend, sid, 1, ["a"]).ok
    log = backend.requests_log()
    assert len(log) == 2 and log[0]["conn"] == log[1]["conn"]
    assert backend.counts()["connections"] == 1


def test_survives_client_disconnect_mid_request(backend, http):
    host, port = backend.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/sync/init HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"external_id\"")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/sync/chunk HTTP/1.1\r\nHost: x\r\n")
    assert init(http, backend).ok


def test_parallel_sessions(backend):
    import concurrent.futures

    def upload(i):
        with requests.Session() as http:
            sid = new_session(http, backend, f"par-{i}")
            for n in range(20):
                assert chunk(http, backend, sid, n * 5 + 1, [f"{i}:{n}:{k}" for k in range(5)]).ok

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, range(8)))
    for i in range(8):
        assert backend.lines(f"par-{i}", TRANSCRIPT) == [f"{i}:{n}:{k}" for n in range(20) for k in range(5)]


# ---- standalone mode ---------------------------------------------------------------


def test_standalone_serves_control_surface_and_stops_on_sigterm(tmp_path: Path):
    ready = tmp_path / "ready"
    script = Path(__file__).with_name("fakebackend.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--api-key", OTHER_KEY,
                             "--ready-file", str(ready)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "fake backend did not start"
            time.sleep(0.02)
        url = ready.read_text().strip()
        assert proc.stdout.readline().strip() == url
        remote = type("Remote", (), {"url": url})()
        with requests.Session() as http:
            assert http.get(f"{url}/_test/session/sess-1").status_code == 404
            sid = new_session_with_key(http, remote, OTHER_KEY)
            assert chunk(http, remote, sid, 1, ["a", "b"], key=OTHER_KEY).ok
            snap = http.get(f"{url}/_test/session/sess-1").json()
            assert snap["session_id"] == sid and snap["files"] == {TRANSCRIPT: ["a", "b"]}
            assert snap["chunk_counts"] == {TRANSCRIPT: 1} and snap["events"] == []
            assert http.post(f"{url}/_test/fault", json={"kind": "fail", "n": 1, "status": 502}).ok
            assert init(http, remote, key=OTHER_KEY).status_code == 502
            assert http.post(f"{url}/_test/api_key", json={"action": "revoke", "key": OTHER_KEY}).ok
            assert init(http, remote, key=OTHER_KEY).status_code == 401
            assert http.get(f"{url}/_test/counts").json()["by_status"] == {"200": 2, "502": 1, "401": 1}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def new_session_with_key(http, remote, key):
    r = init(http, remote, key=key)
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


# -- provider rules (providers.md §1.8, §3.4) -----------------------------------------------

THREAD = "01a23340-aae7-79e3-8f92-d579bc5e9b3b"
CHILD = "01a23340-aae7-79e3-8f92-d579bc5e9b3c"


def test_capabilities_are_public_and_a_dict_tests_can_extend_or_remove(http, backend):
    r = http.get(f"{backend.url}/api/v1/capabilities", timeout=10)  # no key: public
    assert r.status_code == 200
    assert r.json() == {"workflow_files": True, "workflow_journal": True, "opencode_subagents": True}
    backend.capabilities["something_new"] = False
    assert http.get(f"{backend.url}/api/v1/capabilities", timeout=10).json()["something_new"] is False
    backend.capabilities = None  # an older server
    assert http.get(f"{backend.url}/api/v1/capabilities", timeout=10).status_code == 404


def test_codex_rollout_only_on_codex_sessions_and_with_the_servers_field_rules(http, backend):
    claude = init(http, backend).json()["session_id"]
    rollout = {"thread_uuid": THREAD, "rollout_path": "/h/.codex/sessions/r.jsonl"}
    r = chunk(http, backend, claude, 1, ["{}"], metadata={"codex_rollout": rollout})
    assert (r.status_code, r.json()["error"]) == (400, "codex_rollout metadata is only supported for codex sessions")
    codex = init(http, backend, external_id=THREAD, provider="codex").json()["session_id"]
    for bad, message in (
            ({"rollout_path": "/r"}, "thread_uuid is required"),
            ({"thread_uuid": "nope", "rollout_path": "/r"}, "thread_uuid must be a valid UUID"),
            (dict(rollout, parent_thread_uuid=""), "parent_thread_uuid must not be empty when provided "
                                                   "(omit the field for root rollouts)"),
            (dict(rollout, parent_thread_uuid=THREAD), "parent_thread_uuid must not equal thread_uuid"),
            ({"thread_uuid": THREAD}, "rollout_path is required"),
            (dict(rollout, source="x" * 65), "source exceeds maximum length of 64 characters")):
        r = chunk(http, backend, codex, 1, ["{}"], file_name="r.jsonl", metadata={"codex_rollout": bad})
        assert (r.status_code, r.json()["error"]) == (400, message)
    assert backend.lines(THREAD, "r.jsonl") == []
    r = chunk(http, backend, codex, 1, ["{}"], file_name="c.jsonl", file_type="agent",
              metadata={"codex_rollout": dict(rollout, thread_uuid=CHILD, parent_thread_uuid=THREAD)})
    assert r.status_code == 200
    [row] = backend.codex_rollouts()
    assert row["parent_thread_uuid"] == THREAD and row["hosted_file_name"] == "c.jsonl"


def test_a_failed_codex_rollout_is_committed_first_as_the_server_does(http, backend):
    codex = init(http, backend, external_id=THREAD, provider="codex").json()["session_id"]
    backend.fail_codex_rollout_next(1)
    rollout = {"thread_uuid": THREAD, "rollout_path": "/r"}
    r = chunk(http, backend, codex, 1, ["{}"], file_name="r.jsonl", metadata={"codex_rollout": rollout})
    assert (r.status_code, r.json()["error"]) == (500, "Failed to record codex rollout")
    assert backend.lines(THREAD, "r.jsonl") == ["{}"] and backend.codex_rollouts() == []


def test_chunk_metadata_counts_only_on_transcript_chunks(http, backend):
    sid = init(http, backend).json()["session_id"]
    assert chunk(http, backend, sid, 1, ["{}"], file_name="agent-abcdef.jsonl", file_type="agent",
                 metadata={"first_user_message": "from an agent"}).status_code == 200
    assert "first_user_message" not in backend.metadata("sess-1")
    r = chunk(http, backend, sid, 1, ["{}"], metadata={"model": "m" * 256})
    assert (r.status_code, r.json()["error"]) == (400, "model exceeds maximum length of 255 characters")
