"""Why a backend could not be reached, in a few plain words.

requests and urllib3 wrap a refused connection in three layers of repr
("HTTPConnectionPool(host=..., port=...): Max retries exceeded with url: ...
(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at
0x7f...>: Failed to establish a new connection: [Errno 111] Connection
refused'))"): ~300 characters that say "connection refused". `transport_cause`
digs the cause out of the exception chain; status, the logs and the metrics
(`error_kind`) use its words.

What counts as *unreachable* (the `unreachable` state, the per-backend log
lines): the connection could not be made or was lost (refused, reset, closed,
no route, DNS, TLS, timeout), or a gateway said the backend behind it is down
(502, 503, 504). A backend that answers 500 or 429 is reachable: it answered;
those are errors of the backend, shown as such, and backed off all the same.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Optional

GATEWAY_DOWN = {502: "bad gateway (HTTP 502)", 503: "service unavailable (HTTP 503)",
                504: "gateway timeout (HTTP 504)"}

_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed by the backend",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ENETDOWN: "network down",
    errno.ETIMEDOUT: "timed out",
    errno.EADDRNOTAVAIL: "address not available",
}


def _chain(exc: BaseException):
    """`exc`, then what caused it: __cause__/__context__, and urllib3's `.reason`/`.args[0]` wrappers."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend([getattr(e, "reason", None) if isinstance(getattr(e, "reason", None), BaseException)
                     else None, e.__cause__, e.__context__])
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))


def transport_cause(exc: BaseException) -> str:
    """A refused, lost or timed-out request said in a few words ("connection refused")."""
    words: Optional[str] = None
    for e in _chain(exc):
        if isinstance(e, socket.gaierror):
            return "the backend's name does not resolve (DNS)"
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not accepted ({e.verify_message or 'verification failed'})"
        if isinstance(e, ssl.SSLError):
            return f"TLS failed ({e.reason or e.__class__.__name__})"
        if isinstance(e, (TimeoutError, socket.timeout)) or "timeout" in type(e).__name__.lower():
            words = words or "timed out"
            continue
        if isinstance(e, OSError) and e.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[e.errno]
        name = type(e).__name__
        if name in ("RemoteDisconnected", "IncompleteRead", "ProtocolError", "ChunkedEncodingError"):
            words = words or "connection closed by the backend mid-answer"
    return words or "connection failed"


def error_kind(exc: BaseException) -> str:
    """A short label for a sink error, as metrics count them (`confabd_errors_total{kind=...}`)."""
    from .base import AuthFailed, PayloadTooLarge, PositionMismatch, RequestRejected, SessionGone, Unavailable

    if isinstance(exc, Unavailable):
        if exc.unreachable:
            return "unreachable"
        if exc.status == 429:
            return "rate_limited"
        return "server_error" if exc.status else "unreadable_answer"
    for cls, kind in ((AuthFailed, "auth"), (SessionGone, "session_gone"), (PayloadTooLarge, "too_large"),
                      (PositionMismatch, "position"), (RequestRejected, "rejected")):
        if isinstance(exc, cls):
            return kind
    return "other"
