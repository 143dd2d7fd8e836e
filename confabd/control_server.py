"""The control socket's transport: listen, accept, frame, be fair, flush, answer later.

It knows nothing of sessions. Each complete request goes to `handle(conn,
request)`, which returns the reply, or None for a reply that comes later
(`stop --wait`): the connection then holds its further requests until
`resume(conn, answer)`. Every socket is non-blocking and served from the
master's selector, so a slow or hostile peer costs a buffer, never the loop.

- accept: the peer's (pid, uid, gid) comes from SO_PEERCRED, the kernel's
  word; `accepts(uid, open_connections)` may refuse a connection outright.
- fairness: at most MAX_REQUESTS_PER_TURN requests per connection per loop
  turn; the rest wait in the backlog for the next turns.
- bounds: a connection is read from only while it has nothing left to
  answer (no complete frame waiting, no deferred reply) and its unsent
  replies are under OUTPUT_HIGH_WATER; otherwise its EVENT_READ is off and
  the kernel's socket buffer pushes back on the peer. So its input is at
  most one frame plus one read, its output at most the mark plus one reply;
  a connection whose output would pass MAX_OUTPUT is dropped.
- the socket is born 0600 (umask) and then given `socket_mode` if any; it is
  removed on close only if it is still ours (same inode).

Framing and decoding are confabd.control's; the protocol is docs/CONTROL.md.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import struct
from typing import Callable, Optional

from . import control, fileio

log = logging.getLogger("confabd.master")

MAX_REQUESTS_PER_TURN = 16  # per connection, per loop turn: fairness under a flood
ACCEPTS_PER_TURN = 64
READ_SIZE = 65536
# Replies not yet taken by the peer: over the mark, its requests wait (and are not read);
# past MAX_OUTPUT (one largest reply over the mark) the peer is dropped.
OUTPUT_HIGH_WATER = 1 << 20
MAX_OUTPUT = OUTPUT_HIGH_WATER + control.MAX_REPLY_FRAME + 4
Handler = Callable[["Connection", control.AnyRequest], Optional[dict]]


class Connection:
    """One control connection: buffered, non-blocking, framed."""

    def __init__(self, sock: socket.socket, peer: tuple[int, int, int]):
        self.sock = sock
        self.peer = peer  # (pid, uid, gid) from SO_PEERCRED: who is asking
        self.inbuf = control.FrameBuffer()
        self.outbuf = bytearray()
        self.deferred = False  # a reply is pending (stop --wait): hold further requests
        self.close_after_flush = False
        self.closed = False
        self.events = selectors.EVENT_READ  # what the selector watches for it now (0: nothing)
        self.on_close: list[Callable[[], None]] = []  # run once when it closes (the peer hung up)

    @property
    def output_full(self) -> bool:
        return len(self.outbuf) > OUTPUT_HIGH_WATER


class ControlServer:
    def __init__(self, path: str, selector: selectors.BaseSelector, *, handle: Handler,
                 accepts: Callable[[int, int], bool], guard: Callable, dir_mode: int = 0o700,
                 socket_mode: Optional[int] = None):
        self.path = path
        self.selector = selector
        self.handle = handle
        self.accepts = accepts
        self.guard = guard  # runs a callback so that a bug in it costs one request, not the master
        self.dir_mode = dir_mode
        self.socket_mode = socket_mode
        self.listener: Optional[socket.socket] = None
        self.socket_ino = 0
        self.connections: set[Connection] = set()
        self.per_uid: dict[int, int] = {}  # uid -> open connections
        self.backlog: dict[Connection, None] = {}  # connections with requests left for the next turn

    # -- the listening socket ------------------------------------------------------

    def listen(self) -> None:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):  # an existing dir (e.g. /tmp) is never chmod-ed
            fileio.make_dirs(directory, self.dir_mode)  # its parents too (~/.confab/run made ~/.confab 0755)
        remove_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        if self.socket_mode is not None:
            os.chmod(self.path, self.socket_mode)
        sock.listen(128)
        sock.setblocking(False)
        self.socket_ino = os.stat(self.path).st_ino
        self.listener = sock
        self.selector.register(sock, selectors.EVENT_READ, self.on_accept)

    def close(self) -> None:
        """Stop listening (shutdown); connections already open are still answered."""
        if self.listener is None:
            return
        self.selector.unregister(self.listener)
        self.listener.close()
        self.listener = None
        try:
            if os.stat(self.path).st_ino == self.socket_ino:
                os.unlink(self.path)
        except OSError:
            pass

    def close_all(self) -> None:
        """The master is exiting: nothing more is started for a peer that hangs up now."""
        for conn in list(self.connections):
            conn.on_close = []
            self.close_connection(conn)
        self.close()

    def on_accept(self, _mask) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving
                log.error("accept failed: %s", exc)
                return
            sock.setblocking(False)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            conn = Connection(sock, struct.unpack("3i", creds))
            uid = conn.peer[1]
            if not self.accepts(uid, self.per_uid.get(uid, 0)):
                sock.close()
                continue
            self.per_uid[uid] = self.per_uid.get(uid, 0) + 1
            self.connections.add(conn)
            self.selector.register(sock, selectors.EVENT_READ, lambda mask, c=conn: self.on_ready(c, mask))

    # -- one connection --------------------------------------------------------------

    def on_ready(self, conn: Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            was_full = conn.output_full
            self.flush(conn)
            if was_full and not conn.closed and not conn.output_full:
                self.serve(conn)  # the peer reads again: its waiting requests go on
        if mask & selectors.EVENT_READ and not conn.closed and conn.events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close_connection(conn)
                return
            conn.inbuf.feed(data)
            self.serve(conn)

    def serve(self, conn: Connection) -> None:
        """Answer the complete requests in the buffer, in order: at most
        MAX_REQUESTS_PER_TURN, so one connection's flood cannot hold the loop
        while others wait; the rest is served on the next turns. A peer that
        does not read its replies is served no further until it does."""
        try:
            for _ in range(MAX_REQUESTS_PER_TURN):
                if conn.deferred or conn.close_after_flush or conn.closed or conn.output_full:
                    return
                try:
                    body = conn.inbuf.next_frame()
                except control.FrameTooLarge as exc:
                    conn.close_after_flush = True
                    self.respond(conn, control.error(str(exc)))
                    return
                if body is None:
                    return
                try:
                    answer = self.handle(conn, control.decode_request(body))
                except ValueError as exc:
                    answer = control.error(str(exc))
                except Exception as exc:  # a bug must cost one request, not the master
                    log.exception("error handling a control request")
                    answer = control.error(f"internal error: {exc}")
                if answer is None:
                    conn.deferred = True
                else:
                    self.respond(conn, answer)
            self.backlog[conn] = None
        finally:
            self.watch(conn)

    def has_backlog(self) -> bool:
        return bool(self.backlog)

    def serve_backlog(self) -> None:
        """Another turn for each connection that still had requests buffered."""
        waiting, self.backlog = self.backlog, {}
        for conn in waiting:
            if not conn.closed:
                self.guard(self.serve, conn)

    def resume(self, conn: Connection, answer: dict) -> None:
        """The reply that `handle` deferred; then the requests that waited behind it."""
        if conn.closed:
            return
        conn.deferred = False
        self.respond(conn, answer)
        self.serve(conn)  # also watches it for reading again

    def respond(self, conn: Connection, answer: dict) -> None:
        if conn.closed:
            return
        frame = control.encode_frame(answer)
        if len(conn.outbuf) + len(frame) > MAX_OUTPUT:
            log.warning("dropping the connection of pid %d (uid %d): it does not read its replies",
                        conn.peer[0], conn.peer[1])
            self.close_connection(conn)
            return
        conn.outbuf += frame
        self.flush(conn)

    def flush(self, conn: Connection) -> None:
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close_connection(conn)
            return
        if not conn.outbuf and conn.close_after_flush:
            self.close_connection(conn)
            return
        self.watch(conn)

    def wanted_events(self, conn: Connection) -> int:
        """Read only what can be answered now: nothing waiting, no reply owed, output under the mark."""
        reading = not (conn.deferred or conn.close_after_flush or conn.output_full
                       or conn in self.backlog or conn.inbuf.has_frame())
        return (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if conn.outbuf else 0)

    def watch(self, conn: Connection) -> None:
        if conn.closed:
            return
        events = self.wanted_events(conn)
        if events == conn.events:
            return
        callback = lambda mask, c=conn: self.on_ready(c, mask)  # noqa: E731
        if conn.events and events:
            self.selector.modify(conn.sock, events, callback)
        elif events:
            self.selector.register(conn.sock, events, callback)
        else:
            self.selector.unregister(conn.sock)
        conn.events = events

    def close_connection(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.connections.discard(conn)
        self.per_uid[conn.peer[1]] -= 1
        self.backlog.pop(conn, None)
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        callbacks, conn.on_close = conn.on_close, []
        for callback in callbacks:
            self.guard(callback)


def remove_stale_socket(path: str) -> None:
    """Remove a socket nobody answers on; raise AlreadyRunning if a master answers."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AlreadyRunning(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing the stale socket %s", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    finally:
        probe.close()
    raise AlreadyRunning(f"another confabd master is already listening on {path}")


class AlreadyRunning(Exception):
    pass
