"""A fake confab backend: a real HTTP server that enforces the sync protocol.

The rules are those of the confab sync API (docs/PROTOCOL.md). This server applies every one
of them strictly, so that a client bug (a gap, a duplicate, an oversized body,
a wrong header) fails a test instead of silently losing a line in production.
It records everything it accepted and can inject faults (errors, delays,
"committed but the answer was lost") to exercise the client's exactly-once
logic.

In-process use (tests)::

    with FakeBackend() as backend:
        ...client talks to backend.url with backend.api_key...
        backend.wait_for(lambda: len(backend.lines(ext_id, name)) == 10)

Out-of-process use (benchmarks, end-to-end tests)::

    python tests/fakebackend.py --port 0 --api-key cfb_... [--ready-file F]

prints ``http://127.0.0.1:PORT`` as its first stdout line and serves until
SIGTERM/SIGINT. The unauthenticated ``/_test/...`` endpoints (see
``_Handler._control``) expose the recorded state and fault injection.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

import msgspec
import zstandard

# --------------------------------------------------------------------------
# Protocol constants (protocol.md)
# --------------------------------------------------------------------------

DEFAULT_API_KEY = "cfb_" + "a" * 40
MAX_BODY = 16 * 1024 * 1024
MAX_CHUNKS_PER_FILE = 30000
MAX_FILE_NAME_BYTES = 512
# The server checks Go's len() of the string: bytes of UTF-8, although its message says "characters".
MAX_SUMMARY_BYTES = 2048
MAX_FIRST_USER_MESSAGE_BYTES = 8192
FILE_TYPES = ("transcript", "agent", "workflow_journal")
EVENT_TYPES = ("session_end",)
INVALID_BODY = "Invalid request body"

#: Request path -> endpoint name used by fault filters, logs and counts.
ENDPOINTS = {
    "/api/v1/sync/init": "init",
    "/api/v1/sync/chunk": "chunk",
    "/api/v1/sync/event": "event",
    "/api/v1/capabilities": "capabilities",  # public: which optional features the server has
    # accounts: the key check, and the device login that gives a new key
    "/api/v1/auth/validate": "validate",
    "/auth/device/code": "device_code",
    "/auth/device/token": "device_token",
}
ACCOUNT_ENDPOINTS = ("validate", "device_code", "device_token")
#: The server's static answer (internal/api/capabilities.go). Absent keys mean false; an older
#: server has no such endpoint (404): set ``backend.capabilities = None``.
CAPABILITIES = {"workflow_files": True, "workflow_journal": True, "opencode_subagents": True}
#: codex_rollout's field limits (ValidateCodexRolloutMetadata), in characters as the server says.
CODEX_ROLLOUT_LIMITS = {"rollout_path": 8192, "cwd": 8192, "model": 255, "source": 64, "thread_source": 255,
                        "agent_path": 8192, "agent_role": 255, "agent_nickname": 255}
MAX_MODEL = 255
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
#: POST: link a GitHub PR or commit URL to a session (the server's internal/api/github_links.go).
GITHUB_LINKS_RE = re.compile(r"/api/v1/sessions/([^/]+)/github-links\Z")
_GITHUB_PR_RE = re.compile(r"^https?://github\.com/([^/]+)/([^/]+)/pull/(\d+)")
_GITHUB_COMMIT_RE = re.compile(r"^https?://github\.com/([^/]+)/([^/]+)/commit/([a-f0-9]+)")
#: The server keys a session by (user, provider, external id); init's provider is one of these.
PROVIDERS = ("claude-code", "codex", "opencode", "cursor")
DEVICE_POLL_INTERVAL_S = 5  # the server's `interval`; clients poll every max(interval, 5 s)
DEVICE_CODE_TTL_S = 900

#: What protocol.md asks of a client's User-Agent; the server does not refuse
#: other values (the real one does not either), tests can assert on it.
USER_AGENT_RE = re.compile(r"^confabd/[^\s/]+ \([^;()]+; [^;()]+\)$")

_IO_PIECE = 1 << 20
_CONTROL_BODY_LIMIT = 1 << 20


class ApiError(Exception):
    """An error answer: ``status`` with body ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The client closed the connection before sending its whole request."""


# --------------------------------------------------------------------------
# Wire schemas. Defaults let us answer "x is required" like the real server
# instead of a generic decode error; wrong JSON types are "Invalid request body".
# --------------------------------------------------------------------------


class InitRequest(msgspec.Struct):
    external_id: str = ""
    transcript_path: str = ""
    metadata: Optional[dict[str, Any]] = None
    provider: str = ""  # "" is claude-code, as the server defaults it


class ChunkRequest(msgspec.Struct):
    session_id: str = ""
    file_name: str = ""
    file_type: str = ""
    first_line: int = 0
    lines: list[str] = []
    metadata: Optional[dict[str, Any]] = None


class EventRequest(msgspec.Struct):
    session_id: str = ""
    event_type: str = ""
    timestamp: str = ""
    payload: Optional[dict[str, Any]] = None


class FaultRequest(msgspec.Struct):
    kind: str
    n: int = 1
    status: int = 500
    retry_after: Optional[str | int | float] = None
    seconds: float = 0.0
    path: Optional[str] = None
    message: str = "injected"


class ApiKeyRequest(msgspec.Struct):
    action: str
    key: str
    user: Optional[str] = None


# --------------------------------------------------------------------------
# Recorded state
# --------------------------------------------------------------------------


@dataclass
class _File:
    file_type: str
    lines: list[str] = field(default_factory=list)
    chunks: int = 0


@dataclass
class _Session:
    session_id: str
    owner: str
    external_id: str
    transcript_path: str
    provider: str = "claude-code"
    files: dict[str, _File] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False
    github_links: list[dict] = field(default_factory=list)

    def merge_metadata(self, values: Optional[dict[str, Any]]) -> None:
        """Keep the latest non-empty value of each field (what a UI would show)."""
        for key, value in (values or {}).items():
            if value not in (None, "", {}, []):
                self.metadata[key] = value

    def files_view(self) -> dict[str, dict[str, int]]:
        return {name: {"last_synced_line": len(f.lines)} for name, f in self.files.items()}


@dataclass
class _Fault:
    kind: str  # "fail" | "delay" | "drop"
    remaining: int
    path: Optional[str]
    status: int = 500
    retry_after: Optional[str] = None
    seconds: float = 0.0
    message: str = "injected"


class Gate:
    """Holds every request to one endpoint until the test releases it (a condition, not a delay).

    `arrived` is set when the first request is being held; once released, held
    and later requests are processed normally."""

    def __init__(self, stopping: threading.Event):
        self.arrived = threading.Event()
        self._released = threading.Event()
        self._stopping = stopping

    def release(self) -> None:
        self._released.set()

    def pass_through(self) -> None:
        if self._released.is_set():
            return
        self.arrived.set()
        while not (self._released.wait(0.05) or self._stopping.is_set()):
            pass


@dataclass
class _Request:
    """What the HTTP handler hands to the backend logic."""

    method: str
    path: str
    endpoint: Optional[str]
    headers: Any
    raw: Optional[bytes]  # None when the body exceeded the raw limit (it was drained)
    raw_size: int
    conn: int


@dataclass
class _Reply:
    status: int
    payload: Any
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False
    injected: Optional[str] = None
    decoded_size: Optional[int] = None
    lossy_utf8: bool = False


# --------------------------------------------------------------------------
# Body decoding
# --------------------------------------------------------------------------


def _decompress_zstd(raw: bytes, limit: int) -> bytes:
    """Stream-decompress, stopping one byte past ``limit`` (zstd-bomb guard)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
    out = bytearray()
    try:
        while len(out) <= limit:
            piece = reader.read(min(_IO_PIECE, limit + 1 - len(out)))
            if not piece:
                break
            out += piece
    except zstandard.ZstdError:
        raise ApiError(400, INVALID_BODY) from None
    if len(out) > limit or not _frames_complete(raw):
        raise ApiError(400, INVALID_BODY)
    return bytes(out)


def _frames_complete(raw: bytes) -> bool:
    """True when every zstd frame in ``raw`` ends properly.

    The stream reader quietly returns what it has for a truncated frame; Go's
    decoder says "unexpected EOF". Only called once the bounded pass has
    proved the output small, so decompressing again here is safe.
    """
    rest = raw
    try:
        while rest:
            frame = zstandard.ZstdDecompressor().decompressobj()
            frame.decompress(rest)
            if not frame.eof:
                return False
            rest = frame.unused_data
    except zstandard.ZstdError:
        return False
    return True


_SURROGATES = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value: Any) -> Any:
    """Go's encoding/json turns lone surrogate escapes into U+FFFD; do the same."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _decode_json(data: bytes, schema: type) -> tuple[Any, bool]:
    """Decode ``data`` into ``schema``; returns (value, lossy).

    The real server (Go) accepts invalid UTF-8 and lone surrogates, replacing
    them with U+FFFD. We accept them too, so that behaviour is reproducible,
    but report ``lossy`` so the request log shows the client relied on it.
    """
    try:
        return msgspec.json.decode(data, type=schema), False
    except msgspec.ValidationError:
        raise ApiError(400, INVALID_BODY) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        obj = json.loads(data.decode("utf-8", "replace"), parse_constant=_reject_constant)
        return msgspec.convert(_replace_surrogates(obj), type=schema), True
    except (ValueError, msgspec.ValidationError):
        raise ApiError(400, INVALID_BODY) from None


def _validate_codex_rollout(rollout: dict) -> None:
    """ValidateCodexRolloutMetadata, with its messages (all 400)."""
    for key, value in rollout.items():
        if not isinstance(value, str):
            raise ApiError(400, INVALID_BODY)
    thread = rollout.get("thread_uuid") or ""
    if not thread:
        raise ApiError(400, "thread_uuid is required")
    if not UUID_RE.match(thread):
        raise ApiError(400, "thread_uuid must be a valid UUID")
    if "parent_thread_uuid" in rollout:
        parent = rollout["parent_thread_uuid"]
        if parent == "":
            raise ApiError(400, "parent_thread_uuid must not be empty when provided (omit the field for root rollouts)")
        if not UUID_RE.match(parent):
            raise ApiError(400, "parent_thread_uuid must be a valid UUID")
        if parent.lower() == thread.lower():
            raise ApiError(400, "parent_thread_uuid must not equal thread_uuid")
    if not rollout.get("rollout_path"):
        raise ApiError(400, "rollout_path is required")
    for key, limit in CODEX_ROLLOUT_LIMITS.items():
        if len(rollout.get(key) or "") > limit:
            raise ApiError(400, f"{key} exceeds maximum length of {limit} characters")


def _parse_rfc3339(text: str) -> None:
    """Raise unless ``text`` is an RFC 3339 timestamp with an offset (Go's time.Time)."""
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, INVALID_BODY) from None
    if "T" not in text.upper() or parsed.tzinfo is None:
        raise ApiError(400, INVALID_BODY)


def _require_type(mapping: Optional[dict], key: str, kind: type) -> None:
    value = (mapping or {}).get(key)
    if value is not None and not isinstance(value, kind):
        raise ApiError(400, INVALID_BODY)


# --------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------


class FakeBackend:
    """The fake server plus a thread-safe Python API to inspect and steer it.

    Sessions are owned by a *user*; by default every API key is its own user
    (so another valid key gets 403). ``add_api_key(key, user=...)`` lets
    several keys share one user, e.g. to simulate a user logging in again.
    """

    handler_class: type = None  # set below to _Handler; tests/hostile_backend.py puts its own

    def __init__(
        self,
        api_keys=(DEFAULT_API_KEY,),
        max_chunks_per_file: int = MAX_CHUNKS_PER_FILE,
        max_body: int = MAX_BODY,
        port: int = 0,
    ):
        if isinstance(api_keys, str):
            api_keys = (api_keys,)
        if not api_keys:
            raise ValueError("at least one API key is required")
        self.api_key: str = api_keys[0]
        self.max_chunks_per_file = max_chunks_per_file
        self.max_body = max_body
        self.url: str = ""
        self._port = port
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {key: key for key in api_keys}
        self._sessions: dict[str, _Session] = {}
        self._live: dict[tuple[str, str, str], _Session] = {}  # (owner, provider, external id)
        self._by_external: dict[str, list[_Session]] = {}
        self._faults: list[_Fault] = []
        self._gates: dict[str, Gate] = {}
        self._devices: dict[str, dict] = {}  # device_code -> {user_code, key_name, key, polls}
        self._slow_downs = 0
        self._device_polls = 0
        self._log: list[dict] = []
        # GET /api/v1/capabilities, per server feature: tests set or add keys; None: the endpoint
        # is missing (a server older than workflow files)
        self.capabilities: Optional[dict[str, bool]] = dict(CAPABILITIES)
        self._codex_rollouts: dict[tuple[str, str], dict] = {}  # (owner, thread_uuid) -> the row
        self._sidecar_chunks = 0  # accepted chunks that carried a codex_rollout
        self._sidecar_failures = 0  # "Failed to record codex rollout" still to give (after the commit)
        self._connections = 0
        self._open_sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # ---- lifecycle ------------------------------------------------------

    def start(self) -> "FakeBackend":
        """Bind 127.0.0.1 (ephemeral port by default) and serve in a thread. Started again
        after `stop()` (an outage), it serves on the same port, with everything it held."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), self.handler_class, self)
        host, port = self._server.server_address[:2]
        self._port = port
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fakebackend", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections, so no thread lingers."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in delay_next
        server.shutdown()
        server.server_close()
        with self._lock:
            sockets = list(self._open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeBackend":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- keys -------------------------------------------------------------

    def approve_device(self, user_code: str, user: Optional[str] = None) -> str:
        """What the person does in the browser: the device code for ``user_code`` gets a new
        key (of ``user``, default a user of its own), handed out at the next token poll."""
        with self._lock:
            device = next(d for d in self._devices.values() if d["user_code"] == user_code)
            device["key"] = "cfb_" + secrets.token_urlsafe(30)[:40]
            self._keys[device["key"]] = user if user is not None else device["key"]
            return device["key"]

    def slow_down_next_polls(self, n: int) -> None:
        """Answer the next ``n`` token polls with "slow_down" (the client must add 5 s)."""
        with self._lock:
            self._slow_downs += n

    def device_polls(self) -> int:
        with self._lock:
            return self._device_polls

    def add_api_key(self, key: str, user: Optional[str] = None) -> None:
        """Accept ``key``; with ``user`` it shares sessions with that user's other keys
        (the user of a key given to the constructor is the key itself)."""
        with self._lock:
            self._keys[key] = user if user is not None else key

    def revoke_api_key(self, key: str) -> None:
        """Requests with ``key`` get 401 from now on."""
        with self._lock:
            self._keys.pop(key, None)

    # ---- inspection -----------------------------------------------------
    # Lookups by external_id use the newest live session with that id (any
    # user); if none is live, the newest deleted one (so its data can still be
    # inspected after delete_session). Unknown ids give empty results.

    def session_id(self, external_id: str) -> Optional[str]:
        """The live session's id, or None (unknown or deleted)."""
        with self._lock:
            session = self._find(external_id)
            return session.session_id if session and not session.deleted else None

    def lines(self, external_id: str, file_name: str) -> list[str]:
        with self._lock:
            session = self._find(external_id)
            f = session.files.get(file_name) if session else None
            return list(f.lines) if f else []

    def file_bytes(self, external_id: str, file_name: str) -> bytes:
        """The file as the server would reassemble it: each line plus "\\n"."""
        lines = self.lines(external_id, file_name)
        return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""

    def files(self, external_id: str) -> dict[str, list[str]]:
        with self._lock:
            session = self._find(external_id)
            return {n: list(f.lines) for n, f in session.files.items()} if session else {}

    def chunk_counts(self, external_id: str) -> dict[str, int]:
        with self._lock:
            session = self._find(external_id)
            return {n: f.chunks for n, f in session.files.items()} if session else {}

    def file_types(self, external_id: str) -> dict[str, str]:
        """file_type each file was created with."""
        with self._lock:
            session = self._find(external_id)
            return {n: f.file_type for n, f in session.files.items()} if session else {}

    def events(self, external_id: str) -> list[dict]:
        """Accepted events, each ``{"event_type", "timestamp", "payload"}``."""
        with self._lock:
            session = self._find(external_id)
            return [dict(e) for e in session.events] if session else []

    def metadata(self, external_id: str) -> dict:
        """Latest non-empty values: init's ``transcript_path`` and metadata fields
        (cwd, git_info, hostname, username, ...) overlaid by chunk metadata
        (git_info, summary, first_user_message)."""
        with self._lock:
            session = self._find(external_id)
            return dict(session.metadata) if session else {}

    def provider(self, external_id: str) -> Optional[str]:
        with self._lock:
            session = self._find(external_id)
            return session.provider if session else None

    def codex_rollouts(self) -> list[dict]:
        """The codex_rollouts table: one row per (user, thread_uuid), as the server keeps it."""
        with self._lock:
            return [dict(row) for row in self._codex_rollouts.values()]

    def sidecar_chunks(self) -> int:
        """How many accepted chunks carried a codex_rollout (the upsert ran for each)."""
        with self._lock:
            return self._sidecar_chunks

    def fail_codex_rollout_next(self, n: int = 1) -> None:
        """The next n chunks carrying codex_rollout are committed, then answered 500
        "Failed to record codex rollout" without the row recorded, as the server does."""
        with self._lock:
            self._sidecar_failures += n

    def delete_session(self, external_id: str) -> None:
        """Delete like the owner would on the web: chunk/event for it now get 404,
        and the next init creates a new session."""
        with self._lock:
            for session in self._by_external.get(external_id, []):
                if not session.deleted:
                    session.deleted = True
                    self._live.pop((session.owner, session.provider, external_id), None)

    def requests_log(self) -> list[dict]:
        """One dict per API request: time, conn, method, path, endpoint, status,
        content_type, content_encoding, body_size (bytes on the wire),
        decoded_size, user_agent, error, injected, dropped, lossy_utf8."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def user_agents(self) -> list[str]:
        """Distinct User-Agent values seen on API requests, in order of first use."""
        seen: dict[str, None] = {}
        for entry in self.requests_log():
            seen.setdefault(entry["user_agent"] or "", None)
        return list(seen)

    def counts(self) -> dict:
        """Totals: requests, connections, by_path, by_status, by_path_status,
        dropped, injected, lossy_utf8."""
        log = self.requests_log()
        with self._lock:
            connections = self._connections
        out: dict[str, Any] = {
            "requests": len(log), "connections": connections, "by_path": {},
            "by_status": {}, "by_path_status": {}, "dropped": 0, "injected": 0, "lossy_utf8": 0,
        }
        for entry in log:
            name, status = entry["endpoint"] or "other", entry["status"]
            out["by_path"][name] = out["by_path"].get(name, 0) + 1
            out["by_status"][status] = out["by_status"].get(status, 0) + 1
            per_path = out["by_path_status"].setdefault(name, {})
            per_path[status] = per_path.get(status, 0) + 1
            out["dropped"] += entry["dropped"]
            out["injected"] += entry["injected"] is not None
            out["lossy_utf8"] += entry["lossy_utf8"]
        return out

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> None:
        """Poll ``predicate()`` until truthy; else AssertionError saying what was seen.

        Exceptions from the predicate count as "not yet" (so ``lambda:
        b.lines(x, f)[9] == ...`` works) and are shown if time runs out.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                last: Any = predicate()
                if last:
                    return
            except Exception as exc:  # noqa: BLE001 - reported below
                last = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        name = getattr(predicate, "__qualname__", repr(predicate))
        tail = [
            f"{e['method']} {e['path']} -> {e['status']}"
            + (f" ({e['error']})" if e["error"] else "")
            for e in self.requests_log()[-8:]
        ]
        raise AssertionError(
            f"condition {name} not met within {timeout}s; last result: {last!r}; "
            f"last requests: {tail}"
        )

    # ---- fault injection -------------------------------------------------

    def fail_next(self, n: int, status: int, retry_after=None, path: Optional[str] = None,
                  message: str = "injected") -> None:
        """Answer the next ``n`` matching requests with ``status`` without processing
        them (like a proxy or overloaded server), with Retry-After if given."""
        retry = None if retry_after is None else str(retry_after)
        self._add_fault(_Fault("fail", n, path, status=status, retry_after=retry, message=message))

    def delay_next(self, n: int, seconds: float, path: Optional[str] = None) -> None:
        """Sleep ``seconds`` before processing the next ``n`` matching requests (to
        exceed client timeouts); they are still processed and committed."""
        self._add_fault(_Fault("delay", n, path, seconds=seconds))

    def commit_then_drop_next(self, n: int, path: Optional[str] = "chunk") -> None:
        """Process and commit the next ``n`` matching requests, then close the
        connection without any response: the "answer was lost" case."""
        self._add_fault(_Fault("drop", n, path))

    def gate(self, path: str) -> Gate:
        """Hold every request to ``path`` ("init", "chunk" or "event") until the
        returned Gate is released; the held requests are then processed."""
        if path not in ENDPOINTS.values():
            raise ValueError(f"path must be one of {sorted(ENDPOINTS.values())}")
        gate = Gate(self._stopping)
        with self._lock:
            self._gates[path] = gate
        return gate

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            gates, self._gates = list(self._gates.values()), {}
        for gate in gates:
            gate.release()

    def _add_fault(self, fault: _Fault) -> None:
        if fault.path not in (None, *ENDPOINTS.values()):
            raise ValueError(f"path must be one of {sorted(ENDPOINTS.values())} or None")
        if fault.remaining < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, kind: str, endpoint: str) -> Optional[_Fault]:
        """Consume one use of the first queued fault of ``kind`` matching ``endpoint``.
        Caller holds the lock."""
        for fault in self._faults:
            if fault.kind == kind and fault.path in (None, endpoint):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    # ---- request handling (called from handler threads) --------------------

    def _handle(self, req: _Request) -> _Reply:
        """Faults first (they model things in front of the server), then the API."""
        with self._lock:
            delay = self._take_fault("delay", req.endpoint)
            fail = self._take_fault("fail", req.endpoint)
            drop = None if fail else self._take_fault("drop", req.endpoint)
            gate = self._gates.get(req.endpoint)
        if gate:
            gate.pass_through()
        if delay:
            self._stopping.wait(delay.seconds)
        if fail:
            headers = [("Retry-After", fail.retry_after)] if fail.retry_after is not None else []
            return _Reply(fail.status, {"error": fail.message}, headers, injected="fail")
        reply = self._process(req)
        if drop:
            reply.drop, reply.injected = True, "drop"
        elif delay:
            reply.injected = "delay"
        return reply

    def _process(self, req: _Request) -> _Reply:
        if req.endpoint in ACCOUNT_ENDPOINTS:
            return self._account(req)
        if req.endpoint == "capabilities":
            with self._lock:
                return self._capabilities(req)
        decoded_size = None
        try:
            if req.method != "POST":
                raise ApiError(405, "Method not allowed")
            owner = self._authenticate(req.headers.get("Authorization"))
            data = self._decode_body(req)
            decoded_size = len(data)
            if req.endpoint == "github_links":
                return _Reply(201, self._github_link(owner, GITHUB_LINKS_RE.match(req.path).group(1), data))
            handler = {"init": self._init, "chunk": self._chunk, "event": self._event}[req.endpoint]
            payload, lossy = handler(owner, data)
            return _Reply(200, payload, decoded_size=decoded_size, lossy_utf8=lossy)
        except ApiError as err:
            return _Reply(err.status, {"error": err.message}, decoded_size=decoded_size)

    def _capabilities(self, req: _Request) -> _Reply:
        """GET, no auth: the server's static map (internal/api/capabilities.go); None: an older server's 404."""
        if req.method != "GET":
            return _Reply(405, {"error": "Method not allowed"})
        if self.capabilities is None:
            return _Reply(404, {"error": "Not found"})
        return _Reply(200, dict(self.capabilities))

    def _account(self, req: _Request) -> _Reply:
        """GET validate (Bearer), POST device_code and device_token (no auth), as the server does."""
        try:
            if req.endpoint == "validate":
                if req.method != "GET":
                    raise ApiError(405, "Method not allowed")
                owner = self._authenticate(req.headers.get("Authorization"))
                return _Reply(200, {"valid": True, "user": owner})
            if req.method != "POST":
                raise ApiError(405, "Method not allowed")
            try:
                body = msgspec.json.decode(req.raw or b"")
            except msgspec.DecodeError:
                raise ApiError(400, INVALID_BODY) from None
            if not isinstance(body, dict):
                raise ApiError(400, INVALID_BODY)
            return self._device_code(body) if req.endpoint == "device_code" else self._device_token(body)
        except ApiError as err:
            return _Reply(err.status, {"error": err.message})

    def _device_code(self, body: dict) -> _Reply:
        device_code, user_code = secrets.token_hex(16), secrets.token_hex(2).upper() + "-" + secrets.token_hex(2).upper()
        with self._lock:
            self._devices[device_code] = {"user_code": user_code, "key_name": str(body.get("key_name") or ""),
                                          "key": None}
        return _Reply(200, {"device_code": device_code, "user_code": user_code,
                            "verification_uri": f"{self.url}/auth/device", "expires_in": DEVICE_CODE_TTL_S,
                            "interval": DEVICE_POLL_INTERVAL_S})

    def _device_token(self, body: dict) -> _Reply:
        device_code = str(body.get("device_code") or "")
        with self._lock:
            self._device_polls += 1
            device = self._devices.get(device_code)
            if device is None:
                return _Reply(400, {"error": "invalid_grant"})
            if self._slow_downs:
                self._slow_downs -= 1
                return _Reply(400, {"error": "slow_down"})
            if device["key"] is None:
                return _Reply(400, {"error": "authorization_pending"})
            del self._devices[device_code]  # a device code is good for one key
        return _Reply(200, {"access_token": device["key"], "token_type": "Bearer"})

    def _authenticate(self, header: Optional[str]) -> str:
        """Return the key's user, or 401."""
        if not header:
            raise ApiError(401, "Missing Authorization header")
        scheme, _, key = header.partition(" ")
        if scheme != "Bearer" or not key.strip():
            raise ApiError(401, "Invalid Authorization header")
        with self._lock:
            owner = self._keys.get(key.strip())
        if owner is None:
            raise ApiError(401, "Invalid API key")
        return owner

    def _decode_body(self, req: _Request) -> bytes:
        """Content-Type and Content-Encoding checks (415), then the size limit (400)."""
        media_type = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(415, "Content-Type must be application/json")
        encoding = (req.headers.get("Content-Encoding") or "").strip()
        if encoding and encoding.lower() != "zstd":
            raise ApiError(415, f"Unsupported Content-Encoding: {encoding}")
        if req.raw is None:
            raise ApiError(400, INVALID_BODY)
        if encoding:
            return _decompress_zstd(req.raw, self.max_body)
        if len(req.raw) > self.max_body:
            raise ApiError(400, INVALID_BODY)
        return req.raw

    def _init(self, owner: str, data: bytes) -> tuple[dict, bool]:
        body, lossy = _decode_json(data, InitRequest)
        if not body.external_id:
            raise ApiError(400, "external_id is required")
        if not body.transcript_path:
            raise ApiError(400, "transcript_path is required")
        for key in ("cwd", "hostname", "username"):
            _require_type(body.metadata, key, str)
        _require_type(body.metadata, "git_info", dict)
        provider = body.provider or "claude-code"
        if provider not in PROVIDERS:
            raise ApiError(400, f"invalid provider: {body.provider!r}")
        with self._lock:
            session = self._live.get((owner, provider, body.external_id))
            if session is None:
                session = self._create_session(owner, body.external_id, body.transcript_path, provider)
            session.transcript_path = body.transcript_path
            session.merge_metadata({"transcript_path": body.transcript_path})
            session.merge_metadata(body.metadata)
            return {"session_id": session.session_id, "files": session.files_view()}, lossy

    def _create_session(self, owner: str, external_id: str, transcript_path: str, provider: str) -> _Session:
        session = _Session(str(uuid.uuid4()), owner, external_id, transcript_path, provider)
        self._sessions[session.session_id] = session
        self._live[(owner, provider, external_id)] = session
        self._by_external.setdefault(external_id, []).append(session)
        return session

    def _chunk(self, owner: str, data: bytes) -> tuple[dict, bool]:
        body, lossy = _decode_json(data, ChunkRequest)
        self._validate_chunk(body)
        with self._lock:
            session = self._owned_session(body.session_id, owner)
            state = session.files.get(body.file_name)
            held = len(state.lines) if state else 0
            if state is not None and state.chunks >= self.max_chunks_per_file:
                raise ApiError(400, f"File has too many chunks (max {self.max_chunks_per_file})")
            if body.first_line != held + 1:
                raise ApiError(
                    400, f"first_line must be {held + 1} (got {body.first_line}) - chunks must be contiguous"
                )
            rollout = (body.metadata or {}).get("codex_rollout")
            if rollout is not None and session.provider != "codex":
                raise ApiError(400, "codex_rollout metadata is only supported for codex sessions")
            if state is None:
                state = session.files[body.file_name] = _File(body.file_type)
            state.lines.extend(body.lines)
            state.chunks += 1
            # The server applies chunk metadata to the session only for transcript chunks; sidecars for any.
            if body.file_type == "transcript":
                session.merge_metadata({k: v for k, v in (body.metadata or {}).items() if k != "codex_rollout"})
            if rollout is not None:
                if self._sidecar_failures:  # committed above, as the server does, then the sidecar fails
                    self._sidecar_failures -= 1
                    raise ApiError(500, "Failed to record codex rollout")
                self._record_codex_rollout(owner, session, body.file_name, rollout)
            return {"last_synced_line": len(state.lines)}, lossy

    def _record_codex_rollout(self, owner: str, session: _Session, file_name: str, rollout: dict) -> None:
        """The server's upsert (internal/db/codex/rollouts.go): first parent wins, empty strings keep
        what is stored, the hosted session and file always move. Caller holds the lock."""
        self._sidecar_chunks += 1
        row = self._codex_rollouts.setdefault((owner, rollout["thread_uuid"]), {})
        for key, value in rollout.items():
            if key == "parent_thread_uuid" and row.get(key):
                continue
            if value != "" or key not in row:
                row[key] = value
        row.update(hosted_session_id=session.session_id, hosted_file_name=file_name)

    @staticmethod
    def _validate_chunk(body: ChunkRequest) -> None:
        """Everything checkable without the session: field presence, limits, types."""
        if not body.session_id:
            raise ApiError(400, "session_id is required")
        if not body.file_name:
            raise ApiError(400, "file_name is required")
        if len(body.file_name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
            raise ApiError(400, f"file_name exceeds {MAX_FILE_NAME_BYTES} bytes")
        # The server keeps a name's slashes as storage key segments (Cursor's subagents/<id>.jsonl,
        # Claude's workflow files) and limits only the length; what it would make of empty, '.' or
        # '..' segments no client should find out, so this backend refuses them.
        if "\\" in body.file_name or any(part in ("", ".", "..") for part in body.file_name.split("/")):
            raise ApiError(400, "file_name must be a relative path of plain names")
        if body.file_type not in FILE_TYPES:
            raise ApiError(400, f"Invalid file_type: {body.file_type!r} (must be one of {', '.join(FILE_TYPES)})")
        if body.first_line < 1:
            raise ApiError(400, "first_line must be >= 1")
        if not body.lines:
            raise ApiError(400, "lines must not be empty")
        if any("\n" in line for line in body.lines):
            # Not a server rule, a protocol one: a line never contains its newline.
            raise ApiError(400, "a line must not contain a newline")
        meta = body.metadata or {}
        for key in ("summary", "first_user_message"):
            _require_type(meta, key, str)
        _require_type(meta, "git_info", dict)
        if len((meta.get("summary") or "").encode()) > MAX_SUMMARY_BYTES:
            raise ApiError(400, f"metadata.summary exceeds {MAX_SUMMARY_BYTES} characters")
        if len((meta.get("first_user_message") or "").encode()) > MAX_FIRST_USER_MESSAGE_BYTES:
            raise ApiError(400, f"metadata.first_user_message exceeds {MAX_FIRST_USER_MESSAGE_BYTES} characters")
        _require_type(meta, "model", str)
        if len(meta.get("model") or "") > MAX_MODEL:
            raise ApiError(400, f"model exceeds maximum length of {MAX_MODEL} characters")
        _require_type(meta, "latest_message_at", str)
        if meta.get("latest_message_at"):
            _parse_rfc3339(meta["latest_message_at"])
        _require_type(meta, "codex_rollout", dict)
        if meta.get("codex_rollout") is not None:
            _validate_codex_rollout(meta["codex_rollout"])

    def _event(self, owner: str, data: bytes) -> tuple[dict, bool]:
        body, lossy = _decode_json(data, EventRequest)
        if not body.session_id:
            raise ApiError(400, "session_id is required")
        if body.event_type not in EVENT_TYPES:
            raise ApiError(400, f"Invalid event_type: {body.event_type!r} (only session_end is accepted)")
        if not body.timestamp:
            raise ApiError(400, "timestamp is required")
        _parse_rfc3339(body.timestamp)
        with self._lock:
            session = self._owned_session(body.session_id, owner)
            session.events.append(
                {"event_type": body.event_type, "timestamp": body.timestamp, "payload": body.payload}
            )
        return {"success": True}, lossy

    def _github_link(self, owner: str, session_id: str, data: bytes) -> dict:
        """The server's rules: a PR or commit URL of github.com, source cli_hook or manual, the caller's
        session (404 otherwise, someone else's included), each URL once per session (409)."""
        try:
            body = json.loads(data)
        except ValueError:
            raise ApiError(400, "Invalid request body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid request body")
        url = body.get("url")
        if not url or not isinstance(url, str):
            raise ApiError(400, "URL is required")
        match = _GITHUB_PR_RE.match(url) or _GITHUB_COMMIT_RE.match(url)
        if not match:
            raise ApiError(400, "invalid GitHub URL: must be a PR or commit URL")
        link_type = "pull_request" if _GITHUB_PR_RE.match(url) else "commit"
        if body.get("link_type") and body["link_type"] != link_type:
            raise ApiError(400, f"link_type '{body['link_type']}' doesn't match URL type '{link_type}'")
        if body.get("source") not in ("cli_hook", "manual"):
            raise ApiError(400, "source must be 'cli_hook' or 'manual'")
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.deleted or session.owner != owner:
                raise ApiError(404, "Session not found")
            if any(link["url"] == url for link in session.github_links):
                raise ApiError(409, "GitHub link already exists")
            link = {"id": sum(len(s.github_links) for s in self._sessions.values()) + 1, "session_id": session_id,
                    "link_type": link_type, "url": url, "owner": match.group(1), "repo": match.group(2),
                    "ref": match.group(3), "source": body["source"]}
            session.github_links.append(link)
            return dict(link)

    def github_links(self, external_id: str) -> list[dict]:
        """The links made to the session, in order."""
        with self._lock:
            session = self._find(external_id)
            return [dict(link) for link in session.github_links] if session else []

    def _owned_session(self, session_id: str, owner: str) -> _Session:
        """404 for unknown or deleted sessions, 403 for someone else's. Caller holds the lock."""
        session = self._sessions.get(session_id)
        if session is None or session.deleted:
            raise ApiError(404, "Session not found")
        if session.owner != owner:
            raise ApiError(403, "Session belongs to another user")
        return session

    def _find(self, external_id: str) -> Optional[_Session]:
        """Newest live session for ``external_id``, else newest deleted one. Caller holds the lock."""
        sessions = self._by_external.get(external_id, [])
        live = [s for s in sessions if not s.deleted]
        return (live or sessions or [None])[-1]

    def _record(self, req: _Request, reply: _Reply, dropped: bool) -> None:
        entry = {
            "time": time.time(),
            "conn": req.conn,
            "method": req.method,
            "path": req.path,
            "endpoint": req.endpoint,
            "status": reply.status,
            "content_type": req.headers.get("Content-Type"),
            "content_encoding": req.headers.get("Content-Encoding"),
            "body_size": req.raw_size,
            "decoded_size": reply.decoded_size,
            "user_agent": req.headers.get("User-Agent"),
            "error": reply.payload.get("error") if isinstance(reply.payload, dict) else None,
            "injected": reply.injected,
            "dropped": dropped,
            "lossy_utf8": reply.lossy_utf8,
        }
        with self._lock:
            self._log.append(entry)

    def _connection_opened(self, sock: socket.socket) -> int:
        with self._lock:
            self._connections += 1
            self._open_sockets.add(sock)
            return self._connections

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open_sockets.discard(sock)

    # ---- control surface for out-of-process use -----------------------------

    def _session_snapshot(self, external_id: str) -> Optional[dict]:
        with self._lock:
            session = self._find(external_id)
            if session is None:
                return None
            return {
                "session_id": session.session_id,
                "deleted": session.deleted,
                "provider": session.provider,
                "files": {n: list(f.lines) for n, f in session.files.items()},
                "events": [dict(e) for e in session.events],
                "chunk_counts": {n: f.chunks for n, f in session.files.items()},
                "metadata": dict(session.metadata),
            }

    def _apply_fault(self, fault: FaultRequest) -> None:
        if fault.kind == "fail":
            self.fail_next(fault.n, fault.status, fault.retry_after, fault.path, fault.message)
        elif fault.kind == "delay":
            self.delay_next(fault.n, fault.seconds, fault.path)
        elif fault.kind == "drop":
            self.commit_then_drop_next(fault.n, fault.path or "chunk")
        else:
            raise ApiError(400, f"unknown fault kind {fault.kind!r}")


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, backend: FakeBackend):
        self.backend = backend
        super().__init__(address, handler)

    def handle_error(self, request, client_address) -> None:
        """Clients vanishing is normal here (timeouts, dropped connections): stay quiet."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, _ClientGone)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Reads one request fully (keep-alive needs it), delegates, writes one reply."""

    protocol_version = "HTTP/1.1"
    server_version = "fakeconfab/1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    timeout = 300  # idle keep-alive connections are eventually reaped

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.conn_id = self.server.backend._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.backend._connection_closed(self.connection)

    def log_message(self, format, *args) -> None:  # noqa: A002 - signature from base
        pass

    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_POST

    def _dispatch(self) -> None:
        try:
            path = urlsplit(self.path).path
            if path.startswith("/_test/"):
                self._control(path)
            else:
                self._api(path)
        except (_ClientGone, OSError):
            self.close_connection = True

    def _api(self, path: str) -> None:
        backend = self.server.backend
        endpoint = ENDPOINTS.get(path) or ("github_links" if GITHUB_LINKS_RE.match(path) else None)
        raw, raw_size = self._read_body(backend.max_body + (backend.max_body >> 6) + 4096)
        req = _Request(self.command, path, endpoint, self.headers, raw, raw_size, self.conn_id)
        if endpoint is None:
            reply = _Reply(404, {"error": "Not found"})
        else:
            reply = backend._handle(req)
        backend._record(req, reply, dropped=reply.drop)
        if reply.drop:
            self._drop()
        else:
            self._send(reply.status, reply.payload, reply.headers)

    def _drop(self) -> None:
        """Close without answering: the client cannot know whether we committed."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, status: int, payload: Any, headers=()) -> None:
        body = msgspec.json.encode(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ---- body reading: always consume the whole body, keep at most ``limit`` ----

    def _read_body(self, limit: int) -> tuple[Optional[bytes], int]:
        """Return (body or None if longer than ``limit``, bytes received)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True  # cannot find the next request
            return None, 0
        if length < 0:
            self.close_connection = True
            return None, 0
        return self._read_exact(length, keep=length <= limit), length

    def _read_exact(self, length: int, keep: bool) -> Optional[bytes]:
        buf = bytearray()
        remaining = length
        while remaining:
            piece = self.rfile.read(min(remaining, _IO_PIECE))
            if not piece:
                raise _ClientGone()
            if keep:
                buf += piece
            remaining -= len(piece)
        return bytes(buf) if keep else None

    def _read_chunked(self, limit: int) -> tuple[Optional[bytes], int]:
        buf: Optional[bytearray] = bytearray()
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            if not size_line:
                raise _ClientGone()
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                return None, total
            if size == 0:
                break
            piece = self._read_exact(size, keep=buf is not None and total + size <= limit)
            total += size
            if piece is None:
                buf = None  # over the limit: keep draining, remember nothing
            elif buf is not None:
                buf += piece
            self.rfile.readline(16)  # CRLF after the chunk
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return (bytes(buf) if buf is not None else None), total

    # ---- /_test control surface (no auth) --------------------------------------

    def _control(self, path: str) -> None:
        """GET/DELETE /_test/session/<external_id>, POST /_test/fault,
        POST /_test/api_key {"action": "add"|"revoke", "key", "user"},
        GET /_test/counts, GET /_test/log."""
        backend = self.server.backend
        raw, _ = self._read_body(_CONTROL_BODY_LIMIT)
        try:
            status, payload = self._control_reply(backend, path, raw or b"")
        except ApiError as err:
            status, payload = err.status, {"error": err.message}
        self._send(status, payload)

    def _control_reply(self, backend: FakeBackend, path: str, raw: bytes) -> tuple[int, Any]:
        method = self.command
        if path.startswith("/_test/session/"):
            external_id = unquote(path[len("/_test/session/"):])
            if method == "DELETE":
                backend.delete_session(external_id)
                return 200, {"success": True}
            snapshot = backend._session_snapshot(external_id)
            return (200, snapshot) if snapshot else (404, {"error": "Session not found"})
        if path == "/_test/fault" and method == "POST":
            fault, _ = _decode_json(raw, FaultRequest)
            try:
                backend._apply_fault(fault)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
            return 200, {"success": True}
        if path == "/_test/api_key" and method == "POST":
            body, _ = _decode_json(raw, ApiKeyRequest)
            if body.action == "add":
                backend.add_api_key(body.key, body.user)
            elif body.action == "revoke":
                backend.revoke_api_key(body.key)
            else:
                raise ApiError(400, f"unknown action {body.action!r}")
            return 200, {"success": True}
        if path == "/_test/counts":
            return 200, backend.counts()
        if path == "/_test/log":
            return 200, backend.requests_log()
        return 404, {"error": "Not found"}


FakeBackend.handler_class = _Handler


# --------------------------------------------------------------------------
# Standalone mode
# --------------------------------------------------------------------------


def _write_ready_file(path: str, url: str) -> None:
    """Atomic, so a poller never reads half a URL."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(url + "\n")
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Fake confab sync backend (protocol.md) for tests.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = ephemeral)")
    parser.add_argument("--api-key", action="append", dest="api_keys", help="accepted key (repeatable)")
    parser.add_argument("--ready-file", help="write the base URL here once listening")
    parser.add_argument("--max-chunks-per-file", type=int, default=MAX_CHUNKS_PER_FILE)
    parser.add_argument("--max-body", type=int, default=MAX_BODY)
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    backend = FakeBackend(
        api_keys=tuple(args.api_keys or (DEFAULT_API_KEY,)),
        max_chunks_per_file=args.max_chunks_per_file, max_body=args.max_body, port=args.port,
    ).start()
    print(backend.url, flush=True)
    if args.ready_file:
        _write_ready_file(args.ready_file, backend.url)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
