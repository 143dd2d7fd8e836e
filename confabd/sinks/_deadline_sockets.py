"""Connections whose every blocking socket call ends by one deadline per request.

requests' read timeout applies to each receive: a backend that sends one byte
every few seconds never trips it, and one request could last forever (holding
a worker's final sync, and `confabctl stop --wait`, far past the shutdown
timeout). Here each connection's socket is wrapped so that, before every
receive or send, its timeout is cut to what is left until the current
request's deadline (set with `deadline(...)` around the request, per thread).
When nothing is left, the call fails with `DeadlinePassed`, a TimeoutError,
which urllib3 and requests report as a read timeout.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from typing import Iterator, Optional

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

SEND_PIECE = 64 * 1024

_current = threading.local()


class DeadlinePassed(TimeoutError):
    """The request's total deadline passed."""


@contextlib.contextmanager
def deadline(when: float) -> Iterator[None]:
    """Every socket call of this thread's requests ends by `when` (time.monotonic()),
    or by an enclosing deadline if that is earlier: a caller with a deadline of its
    own (a worker's final sync) can wrap the sink's calls in one."""
    previous = getattr(_current, "deadline", None)
    _current.deadline = when if previous is None else min(when, previous)
    try:
        yield
    finally:
        _current.deadline = previous


def _remaining(timeout: Optional[float]) -> Optional[float]:
    """The timeout for the next socket call: `timeout`, cut to the time left."""
    when = getattr(_current, "deadline", None)
    if when is None:
        return timeout
    left = when - time.monotonic()
    if left <= 0:
        raise DeadlinePassed("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineSocket:
    """A socket (plain or TLS) whose blocking calls honour the request's deadline."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._timeout = sock.gettimeout()

    def settimeout(self, timeout: Optional[float]) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self._timeout

    def _arm(self) -> None:
        self._sock.settimeout(_remaining(self._timeout))

    def recv(self, size: int, flags: int = 0) -> bytes:
        self._arm()
        return self._sock.recv(size, flags)

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes, flags)

    def send(self, data, flags: int = 0) -> int:
        self._arm()
        return self._sock.send(data, flags)

    def sendall(self, data, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[self.send(view[:SEND_PIECE], flags):]

    def makefile(self, mode: str = "r", buffering: Optional[int] = None, **_kwargs):
        """A binary file over this wrapper (http.client reads the answer through it)."""
        raw = socket.SocketIO(self, mode.replace("b", ""))  # type: ignore[arg-type]
        self._sock._io_refs += 1  # type: ignore[attr-defined] - as socket.makefile does
        if "r" in mode:
            return io.BufferedReader(raw, buffering or io.DEFAULT_BUFFER_SIZE)
        return io.BufferedWriter(raw, buffering or io.DEFAULT_BUFFER_SIZE)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _DeadlineHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock)


class _DeadlineHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock)


class _DeadlineHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


POOL_CLASSES = {"http": _DeadlineHTTPConnectionPool, "https": _DeadlineHTTPSConnectionPool}
