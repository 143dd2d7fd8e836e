"""The HTTP sink: the confab backend's incremental-sync API (protocol.md).

One keep-alive `requests.Session` per sink. Every answer is mapped to exactly
one error class of base.py, following protocol.md's status table, and the
sink never retries: after a failure the engine must re-run init before the
next chunk (the server may have committed a chunk whose answer was lost), so
a retry here would be wrong, not merely redundant.

Error messages carry the status, the endpoint and the server's error text,
and never the API key: no header or request object is ever formatted into a
message, and every message is scrubbed of the key as a last line of defence.

The backend is not trusted (docs/SECURITY.md): every answer is read with a cap
on its size, compressed or not (`MAX_REPLY_BYTES`); every request has one total
deadline, not a timeout per received byte (`_deadline_sockets`); its error text
is shown only as printable text; plain http goes to loopback only, and never
through a proxy.
"""

from __future__ import annotations

import email.utils
import http.client
import platform
import re
import ssl
import time
import zlib
from typing import Any, Optional, TypeVar

import msgspec
import requests
import requests.adapters
import requests.auth
import requests.certs
import urllib3.exceptions
import zstandard

from . import _deadline_sockets
from .causes import GATEWAY_DOWN, transport_cause

from .. import __version__
from ..config import check_api_key, check_backend_url, is_loopback_url
from ..text import printable
from ..records import (
    ChunkRequest,
    ChunkResponse,
    ErrorReply,
    EventRequest,
    InitRequest,
    InitResponse,
)
from .base import (
    AuthFailed,
    Chunk,
    PayloadTooLarge,
    PositionMismatch,
    RequestRejected,
    SessionGone,
    SinkError,
    Unavailable,
)

INIT_PATH = "/api/v1/sync/init"
CHUNK_PATH = "/api/v1/sync/chunk"
EVENT_PATH = "/api/v1/sync/event"
# Beyond the sync API: the key check and the device login (confabctl login, doctor).
VALIDATE_PATH = "/api/v1/auth/validate"
CAPABILITIES_PATH = "/api/v1/capabilities"
GITHUB_LINKS_PATH = "/api/v1/sessions/{}/github-links"


class GitHubLinkRequest(msgspec.Struct, frozen=True):
    url: str
    source: str
DEVICE_CODE_PATH = "/auth/device/code"
DEVICE_TOKEN_PATH = "/auth/device/token"

CONNECT_TIMEOUT_S = 10.0
COMPRESS_MIN_BYTES = 1024  # what the original client does
ZSTD_LEVEL = 3
MAX_ERROR_TEXT = 300
MAX_BODY_BYTES = 16 * 1024 * 1024  # the server's limit, after decompression
# Answers are small JSON (init's file list is the largest: ~70 bytes a file).
# Anything longer is refused, after decompression too: a backend (or whatever
# answers in its place) must not be able to fill the worker's memory.
MAX_REPLY_BYTES = 8 * 1024 * 1024
READ_PIECE = 64 * 1024
# A request's total deadline: the read timeout, plus time to send the body at
# no less than 128 KiB/s (a 14 MiB chunk on a slow uplink still fits).
MIN_UPLOAD_BYTES_PER_S = 128 * 1024

POSITION_RE = re.compile(r"first_line must be (\d+)")
DELAY_SECONDS_RE = re.compile(r"\d{1,9}(\.\d+)?\Z")

T = TypeVar("T")
_JSON_ENCODE = msgspec.json.Encoder().encode
_utf8 = bytes.decode  # strict UTF-8


class EventResponse(msgspec.Struct, frozen=True):
    success: bool = False


# One typed decoder per answer, built once: decoding is validation.
_DECODERS = {t: msgspec.json.Decoder(t) for t in (InitResponse, ChunkResponse, EventResponse, ErrorReply, dict)}


_TLS_CONTEXT: Optional[ssl.SSLContext] = None


def tls_context() -> ssl.SSLContext:
    """The one TLS context of this process (built on first use: loading the CA
    stores costs ~50 ms of CPU and a few MB, too much to pay per sink). A master
    that preloads this module and calls it before forking shares it with every
    worker."""
    global _TLS_CONTEXT
    if _TLS_CONTEXT is None:
        context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(requests.certs.where())
        _TLS_CONTEXT = context
    return _TLS_CONTEXT


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    """Connections whose every blocking socket call ends by the request's deadline."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _deadline_sockets.POOL_CLASSES

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _deadline_sockets.POOL_CLASSES
        return manager


class _TLSAdapter(_DeadlineAdapter):
    """Certificate verification stays on (requests' default); TLS 1.2 at least,
    also through a proxy. Trusts the system CAs and requests' bundle."""

    def __init__(self):
        self._context = tls_context()
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        return super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        proxy_kwargs.setdefault("ssl_context", self._context)
        return super().proxy_manager_for(proxy, **proxy_kwargs)


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """For the device login's endpoints: no Authorization header at all."""
    return request


class _BearerAuth(requests.auth.AuthBase):
    """Sets `Authorization: Bearer <key>` on every request.

    As the session's `auth` (rather than a plain header) it also stops requests
    from replacing the header with credentials from ~/.netrc; and its repr
    never shows the key."""

    def __init__(self, api_key: str):
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<api key>)"


def user_agent(version: str = __version__) -> str:
    """`confabd/<version> (<os>; <arch>)`, as protocol.md asks."""
    return f"confabd/{version} ({platform.system().lower()}; {platform.machine()})"


class HttpSink:
    """The Sink protocol over HTTP(S) to a confab backend."""

    kind = "http"

    def __init__(self, backend_url: str, api_key: str, timeout: float = 30.0, version: str = __version__):
        self.base_url = check_backend_url(backend_url)
        api_key = check_api_key(api_key)
        self.timeout = (CONNECT_TIMEOUT_S, timeout)
        self.replaced_lines = 0  # lines that were not valid UTF-8 (sent with U+FFFD)
        self._api_key = api_key
        self.last_date: Optional[str] = None  # the last answer's Date header (confabctl doctor's clock check)
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._session = self._make_session(api_key, version, https=not self.base_url.lower().startswith("http:"),
                                           loopback=is_loopback_url(self.base_url))

    @staticmethod
    def _make_session(api_key: str, version: str, https: bool = True, loopback: bool = False) -> requests.Session:
        session = requests.Session()
        if https:  # verified TLS 1.2+. Plain http:// is for loopback only, and redirects are
            session.mount("https://", _TLSAdapter())  # never followed: no https request can happen then
        else:
            session.mount("http://", _DeadlineAdapter())
        if loopback:
            # Loopback never goes through a proxy: http_proxy would carry the key
            # in clear to wherever it points. (trust_env also reads ~/.netrc and
            # REQUESTS_CA_BUNDLE, neither of which a loopback backend needs.)
            session.trust_env = False
            session.proxies = {}
        session.auth = _BearerAuth(api_key)
        session.headers.update({
            "Content-Type": "application/json",
            "User-Agent": user_agent(version),
            # Answers are small; compressed ones are still accepted (a proxy may
            # compress anyway) and inflated with a bound, never by requests.
            "Accept-Encoding": "identity",
        })
        return session

    # ---- the Sink protocol ----------------------------------------------------

    def init(self, request: InitRequest) -> InitResponse:
        return self._post(INIT_PATH, request, InitResponse)

    def upload_chunk(self, chunk: Chunk) -> int:
        """Send the chunk; return the server's new `last_synced_line` for the file."""
        if chunk.encoded:
            return self._send("POST", CHUNK_PATH, self._encode_chunk(chunk), ChunkResponse).last_synced_line
        request = ChunkRequest(
            session_id=chunk.session_id,
            file_name=chunk.file_name,
            file_type=chunk.file_type,
            first_line=chunk.first_line,
            lines=self._decode_lines(chunk.lines),
            metadata=chunk.metadata,
        )
        return self._post(CHUNK_PATH, request, ChunkResponse).last_synced_line

    def send_event(self, session_id: str, event_type: str, timestamp: str, payload: dict[str, Any]) -> None:
        request = EventRequest(session_id=session_id, event_type=event_type, timestamp=timestamp, payload=payload)
        self._post(EVENT_PATH, request, EventResponse)

    # ---- beyond the sync API ------------------------------------------------------

    def validate_key(self) -> dict:
        """The server's word on the key (`{"valid": true, ...}`); AuthFailed when it refuses it."""
        return self._send("GET", VALIDATE_PATH, None, dict)

    def link_github(self, session_id: str, url: str, source: str) -> dict:
        """Link a commit or PR URL to a session (the Go client's LinkGitHub); SinkError otherwise (409: it
        is linked already)."""
        return self._post(GITHUB_LINKS_PATH.format(session_id), GitHubLinkRequest(url=url, source=source), dict)

    @property
    def capabilities_key(self) -> str:
        return self.base_url

    def capabilities(self) -> dict:
        """GET /api/v1/capabilities (public: no key sent). {} from a server without it (404: a
        definitive "nothing optional"); Unavailable when it cannot say now (ask again later)."""
        deadline = time.monotonic() + self.timeout[1]
        with _deadline_sockets.deadline(deadline):
            status, raw, _retry_after = self._exchange(CAPABILITIES_PATH, None, {}, method="GET", auth=_no_auth)
        if status == 404:
            return {}
        if status != 200:
            raise self._scrub(Unavailable(f"{CAPABILITIES_PATH}: HTTP {status}", status=status))
        try:
            answer = _DECODERS[dict].decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise Unavailable(f"{CAPABILITIES_PATH}: an answer that is not a JSON object") from None
        return {name: value is True for name, value in answer.items() if isinstance(name, str)}

    def post_unauthenticated(self, path: str, payload: dict) -> tuple[int, dict]:
        """POST without the key (the device login's endpoints): (status, the JSON object answered).

        The device-token endpoint answers its "authorization_pending" with a 4xx
        and a JSON body, which the caller reads: so no SinkError for a 4xx here."""
        body = msgspec.json.encode(payload)
        deadline = time.monotonic() + self.timeout[1]
        with _deadline_sockets.deadline(deadline):
            status, raw, _retry_after = self._exchange(path, body, {}, method="POST", auth=_no_auth)
        if status >= 500:
            raise self._scrub(_error_for(path, status, raw, None))
        try:
            return status, _DECODERS[dict].decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise Unavailable(f"{path}: HTTP {status} with an answer that is not JSON", status=status) from None

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:  # never show the key
        return f"HttpSink({self.base_url!r})"

    def __enter__(self) -> "HttpSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- lines ------------------------------------------------------------------

    def encode_lines(self, lines: list[bytes]) -> bytes:
        """`lines` as they go into a chunk's `"lines"` array: JSON strings joined by
        commas, without the brackets (the engine's budget charges exactly this)."""
        return _JSON_ENCODE(self._decode_lines(lines))[1:-1]

    def _encode_chunk(self, chunk: Chunk) -> tuple[bytes, dict[str, str]]:
        """The chunk's body from its encoded blocks, streamed into one zstd frame:
        never built whole (a 14 MiB body in memory twice costs page faults, not only
        copies). The same JSON as `_encode` of the ChunkRequest would produce."""
        covered = sum(count for count, _ in chunk.encoded)
        parts = [body for _, body in chunk.encoded]
        if covered < len(chunk.lines):
            parts.append(self.encode_lines(chunk.lines[covered:]))
        envelope = _JSON_ENCODE(ChunkRequest(
            session_id=chunk.session_id, file_name=chunk.file_name, file_type=chunk.file_type,
            first_line=chunk.first_line, lines=[], metadata=chunk.metadata,
        ))
        # `"lines":[]` cannot occur inside a JSON string (its quotes would be escaped)
        head, empty, tail = envelope.partition(b'"lines":[]')
        size = len(envelope) + sum(map(len, parts)) + len(parts) - 1
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body would be {size} bytes, over the server's "
                                  f"{MAX_BODY_BYTES} (not sent)", 413)
        pieces = [head, b'"lines":[']
        for index, part in enumerate(parts):
            if index:
                pieces.append(b",")
            pieces.append(part)
        pieces += [b"]", tail]
        if size < COMPRESS_MIN_BYTES:
            return b"".join(pieces), {}
        stream = self._compressor.compressobj(size=size)
        out = [stream.compress(piece) for piece in pieces]
        out.append(stream.flush())
        return b"".join(out), {"Content-Encoding": "zstd"}

    def _decode_lines(self, lines: list[bytes]) -> list[str]:
        """Every line decoded in one C-level map; per line only when one is not UTF-8.

        (Not one decode of the joined chunk: a single non-ASCII byte would make
        the whole chunk a wide string, slower to split and to encode.)"""
        try:
            return list(map(_utf8, lines))
        except UnicodeDecodeError:
            return [self._decode_line(line) for line in lines]

    def _decode_line(self, line: bytes) -> str:
        """Lines go out exactly as written (a trailing "\\r" included).

        JSON strings must be Unicode, so a line that is not valid UTF-8 is sent
        with U+FFFD in place of the bad bytes -- what the Go server would store
        anyway -- and counted, so `confabctl status` can say it happened."""
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            self.replaced_lines += 1
            return line.decode("utf-8", errors="replace")

    # ---- one request --------------------------------------------------------------

    def _post(self, path: str, request: msgspec.Struct, reply_type: type[T]) -> T:
        """POST one request; return the decoded 2xx answer or raise one SinkError.

        One total deadline covers connecting, sending, and reading the status,
        headers and body: a backend sending one byte at a time cannot hold the
        worker (and so `confabctl stop --wait`) past it.
        """
        body, headers = self._encode(request)
        return self._send("POST", path, (body, headers), reply_type)

    def _send(self, method: str, path: str, encoded: Optional[tuple[bytes, dict[str, str]]],
              reply_type: type[T]) -> T:
        body, headers = encoded or (b"", {})
        deadline = time.monotonic() + self.timeout[1] + len(body) / MIN_UPLOAD_BYTES_PER_S
        with _deadline_sockets.deadline(deadline):
            status, raw, retry_after = self._exchange(path, body or None, headers, method=method)
        if 200 <= status < 300:
            return self._decode_reply(path, status, raw, reply_type)
        raise self._scrub(_error_for(path, status, raw, retry_after))

    def _exchange(self, path: str, body: Optional[bytes], headers: dict[str, str], method: str = "POST",
                  auth=None) -> tuple[int, bytes, Optional[str]]:
        """Send one request; (status, the answer's body, Retry-After). Unavailable on any failure."""
        try:
            response = self._session.request(
                method, self.base_url + path, data=body, headers=headers, auth=auth,
                timeout=self.timeout, allow_redirects=False, stream=True,
            )
            with response:
                self.last_date = response.headers.get("Date")
                return response.status_code, _read_capped(response), response.headers.get("Retry-After")
        except _ReplyTooLarge as exc:
            raise Unavailable(f"{path}: {exc}") from None
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError, TimeoutError) as exc:
            cause = transport_cause(exc)
            raise Unavailable(f"cannot reach {self.base_url} ({cause})", unreachable=cause) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                ValueError, OSError) as exc:
            # ValueError: http.client refusing a header value (an API key ending
            # in a newline got past requests' own check); its text holds the value.
            raise Unavailable(f"{path}: request failed ({self._describe(exc)})") from None

    def _encode(self, request: msgspec.Struct) -> tuple[bytes, dict[str, str]]:
        """JSON body, zstd-compressed from 1 KiB on.

        Over the server's 16 MiB the body would fail as an indistinguishable
        400 "Invalid request body": refuse it here as PayloadTooLarge, so the
        engine sends fewer lines (its budget is an estimate; this is the check).
        """
        body = msgspec.json.encode(request)
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body would be {len(body)} bytes, over the server's "
                                  f"{MAX_BODY_BYTES} (not sent)", 413)
        if len(body) < COMPRESS_MIN_BYTES:
            return body, {}
        return self._compressor.compress(body), {"Content-Encoding": "zstd"}

    def _decode_reply(self, path: str, status: int, raw: bytes, reply_type: type[T]) -> T:
        try:
            return _DECODERS[reply_type].decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # A 2xx we cannot read: maybe a captive portal or a proxy. Whether
            # the request took effect is unknown, so the engine must re-init.
            raise self._scrub(Unavailable(
                f"{path}: HTTP {status} with an unreadable answer ({printable(exc)})", status=status,
            )) from None

    def _scrub(self, error: SinkError) -> SinkError:
        """Last line of defence: no message ever carries the API key."""
        if self._api_key and self._api_key in str(error):
            error.args = (str(error).replace(self._api_key, "<api key>"),)
        return error

    def _describe(self, exc: BaseException) -> str:
        """A short cause for a transport error: without the key (scrubbed before
        it is cut short, so no part of it survives), printable, one line."""
        text = f"{type(exc).__name__}: {exc}"
        if self._api_key:
            text = text.replace(self._api_key, "<api key>")
        return printable(text)[:MAX_ERROR_TEXT]


# ---------------------------------------------------------------------------
# Reading an answer with a bound.


class _ReplyTooLarge(Exception):
    pass


def _read_capped(response: requests.Response) -> bytes:
    """The answer's body, inflated if the server compressed it; _ReplyTooLarge past MAX_REPLY_BYTES.

    Read raw (requests would inflate without a bound: a 0.3 MB gzip body can
    become 300 MB) in pieces, and inflated with `max_length`, so at most
    MAX_REPLY_BYTES (+ one piece) is ever held.
    """
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    inflater = _inflater(encoding)
    out = bytearray()
    while True:
        piece = response.raw.read(READ_PIECE, decode_content=False)
        if not piece:
            break
        out += inflater.inflate(piece) if inflater else piece
        if len(out) > MAX_REPLY_BYTES:
            raise _ReplyTooLarge(f"answer larger than {MAX_REPLY_BYTES} bytes; refused")
    return bytes(out)


class _BoundedInflater:
    """zlib/gzip inflation that never produces more than MAX_REPLY_BYTES + 1."""

    def __init__(self, wbits: int):
        self._zlib = zlib.decompressobj(wbits)
        self._produced = 0

    def inflate(self, data: bytes) -> bytes:
        room = MAX_REPLY_BYTES + 1 - self._produced  # always >= 1 here (0 would mean "no limit")
        try:
            out = self._zlib.decompress(data, room)
        except zlib.error as exc:
            raise requests.exceptions.ContentDecodingError(f"bad compressed answer: {exc}") from None
        self._produced += len(out)
        if self._produced > MAX_REPLY_BYTES:
            raise _ReplyTooLarge(f"answer inflates to more than {MAX_REPLY_BYTES} bytes; refused")
        return out


def _inflater(encoding: str) -> Optional[_BoundedInflater]:
    if encoding in ("identity", ""):
        return None
    if encoding in ("gzip", "x-gzip"):
        return _BoundedInflater(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _BoundedInflater(zlib.MAX_WBITS)
    raise requests.exceptions.ContentDecodingError(f"unsupported Content-Encoding {printable(encoding)!r}")


# ---------------------------------------------------------------------------
# Status -> error class (protocol.md's table).


def _error_for(path: str, status: int, raw: bytes, retry_after: Optional[str]) -> SinkError:
    text = _error_text(raw)
    message = f"{path}: HTTP {status}" + (f": {text}" if text else "")
    if status == 400:
        match = POSITION_RE.search(text)
        if match:
            return PositionMismatch(message, expected_first_line=int(match.group(1)))
        return RequestRejected(message, status)
    if status in (401, 403):
        return AuthFailed(message, status)
    if status == 404:
        if path == INIT_PATH:  # not a deleted session (that is a chunk's 404): a wrong path, a proxy, an old server
            return Unavailable(message + " (init answered 404: retried like an outage)", status)
        return SessionGone(message, status)
    if status == 413:
        return PayloadTooLarge(message, status)
    if status == 429:
        return Unavailable(message, status, retry_after=parse_retry_after(retry_after))
    if status in GATEWAY_DOWN:  # a proxy saying the backend behind it is down
        return Unavailable(message, status, unreachable=GATEWAY_DOWN[status])
    if status >= 500 or status == 408:
        return Unavailable(message, status)
    return RequestRejected(message, status)  # 415, redirects, other 4xx: retrying cannot help


def _error_text(raw: bytes) -> str:
    """The server's `{"error": ...}` text, else the start of the raw body; cut
    short, on one line, printable (it ends up on root's terminal in `confabctl status`)."""
    try:
        text = _DECODERS[ErrorReply].decode(raw).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = raw[: MAX_ERROR_TEXT * 4].decode("utf-8", errors="replace").strip()
    text = printable(" ".join(text.split()))
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 3] + "..."
    return text


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After as seconds to wait: delta-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if DELAY_SECONDS_RE.match(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)

