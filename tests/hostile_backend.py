"""A hostile confab backend: the fake backend's rules, plus what a malicious backend can do.

`HostileBackend` is a FakeBackend (a real HTTP server on 127.0.0.1) that also

- names files of its choosing in init's answer (`name_files`: paths, `..`,
  absolute names) and takes any chunk for them, keeping what it was sent
  (`stolen`): the "make the client upload any file" attack;
- answers an endpoint with a raw attack instead of a reply (`attack`): a huge
  body, a gzip bomb, one byte at a time (body or headers). `sent` counts what
  each attack wrote, so a test can tell that the client hung up early.

An error text with escape sequences needs no attack: FakeBackend.fail_next
takes the message.
"""

from __future__ import annotations

import threading
import zlib
from typing import Callable, Optional

from tests.fakebackend import ENDPOINTS, ChunkRequest, FakeBackend, _decode_json, _Handler

PIECE = 1 << 20

Attack = Callable[["_HostileHandler", "HostileBackend"], None]


class HostileBackend(FakeBackend):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.named_files: dict[str, int] = {}
        self.stolen: dict[str, list[str]] = {}
        self.chunk_file_names: list[str] = []
        self.sent = 0  # bytes written by attacks
        self.attacks_started = 0
        self._attacks: dict[str, list] = {}  # endpoint -> [attack, remaining (None: forever)]
        self._attack_lock = threading.Lock()

    # ---- the file-name attack -----------------------------------------------

    def name_files(self, *names: str) -> None:
        """Every init answer from now on also lists these names (line 0: "send me all of it")."""
        self.named_files.update({name: 0 for name in names})

    def _init(self, owner: str, data: bytes):
        payload, lossy = super()._init(owner, data)
        payload["files"].update({name: {"last_synced_line": line} for name, line in self.named_files.items()})
        return payload, lossy

    def _chunk(self, owner: str, data: bytes):
        body, lossy = _decode_json(data, ChunkRequest)
        with self._lock:
            self.chunk_file_names.append(body.file_name)
            if body.file_name in self.named_files:  # a hostile server takes anything for its own names
                self.stolen.setdefault(body.file_name, []).extend(body.lines)
                return {"last_synced_line": body.first_line + len(body.lines) - 1}, lossy
        return super()._chunk(owner, data)

    # ---- raw attacks ----------------------------------------------------------

    def attack(self, endpoint: str, what: Attack, times: Optional[int] = None) -> None:
        """Answer the next `times` requests to `endpoint` ("init", "chunk", "event") with `what`."""
        with self._attack_lock:
            self._attacks[endpoint] = [what, times]

    def _take_attack(self, endpoint: Optional[str]) -> Optional[Attack]:
        with self._attack_lock:
            entry = self._attacks.get(endpoint)
            if entry is None:
                return None
            what, remaining = entry
            if remaining is not None:
                if remaining <= 1:
                    del self._attacks[endpoint]
                else:
                    entry[1] = remaining - 1
            self.attacks_started += 1
            return what

    def _count(self, n: int) -> None:
        with self._attack_lock:
            self.sent += n


def huge_body(size: int) -> Attack:
    """A 200 with a `size`-byte body, sent as fast as the client takes it."""

    def run(handler: "_HostileHandler", backend: HostileBackend) -> None:
        handler.raw_headers(200, [("Content-Type", "application/json"), ("Content-Length", str(size))])
        piece = b" " * PIECE
        left = size
        while left and not backend._stopping.is_set():
            n = min(left, PIECE)
            handler.wfile.write(piece[:n])
            backend._count(n)
            left -= n

    return run


_bombs: dict[int, bytes] = {}


def gzip_bomb(inflated: int) -> Attack:
    """A 200 whose small gzip body inflates to `inflated` bytes."""
    if inflated not in _bombs:
        packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        zeros = b"\0" * PIECE
        _bombs[inflated] = b"".join(packer.compress(zeros) for _ in range(inflated // PIECE)) + packer.flush()
    body = _bombs[inflated]

    def run(handler: "_HostileHandler", backend: HostileBackend) -> None:
        handler.raw_headers(200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                                  ("Content-Length", str(len(body)))])
        handler.wfile.write(body)
        backend._count(len(body))

    return run


def drip(interval: float, where: str = "body") -> Attack:
    """One byte every `interval` seconds, forever: of the body, or of the headers themselves."""

    def run(handler: "_HostileHandler", backend: HostileBackend) -> None:
        if where == "body":
            handler.raw_headers(200, [("Content-Type", "application/json"), ("Content-Length", "1000000")])
        else:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
        while not backend._stopping.wait(interval):
            handler.wfile.write(b"a")
            backend._count(1)

    return run


class _HostileHandler(_Handler):
    def _api(self, path: str) -> None:
        backend: HostileBackend = self.server.backend
        what = backend._take_attack(ENDPOINTS.get(path))
        if what is None:
            return super()._api(path)
        self._read_body(backend.max_body + (backend.max_body >> 6) + 4096)
        self.close_connection = True
        try:
            what(self, backend)
        except OSError:  # the client hung up: what the attack is measured by
            pass

    def raw_headers(self, status: int, headers) -> None:
        self.wfile.write(f"HTTP/1.1 {status} OK\r\n".encode()
                         + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n")


HostileBackend.handler_class = _HostileHandler
