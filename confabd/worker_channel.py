"""The master's end of a worker's Pipe, spoken without ever blocking.

A worker is a process its user controls (system mode: it runs as them, who
may stop it with SIGSTOP or make it write anything). So the master neither
writes to it nor reads from it with a call that can wait:
- writes go to a bounded outbox, sent as far as the socket takes them and
  the rest when the selector says it is writable (EVENT_WRITE); a message
  that would take the outbox past MAX_OUTBOX means the worker is not reading:
  `queue` says so and the caller treats the worker as hung;
- reads take what is there and cut it into messages; a message announced
  larger than MAX_MESSAGE is refused (`Unreadable`) instead of being awaited.

The worker keeps its ordinary blocking `multiprocessing.connection.Connection`:
the wire format is the same (a 4-byte big-endian signed length, -1 followed
by an 8-byte length for huge messages, then the bytes). Only the master's
file description is non-blocking (the two ends of a socketpair are two).
"""

from __future__ import annotations

import os
import struct

MAX_OUTBOX = 1 << 20  # Finish (hook input capped at control.MAX_HOOK_INPUT) and Reload are a few KB
MAX_MESSAGE = 16 << 20  # a Report of a session with very many agent files
READ_SIZE = 1 << 16


class Unreadable(Exception):
    """The worker wrote something that is not a message of ours."""


class WorkerChannel:
    def __init__(self, connection):
        self.connection = connection  # the multiprocessing Connection: owns the fd, closes it
        self.fd = connection.fileno()
        os.set_blocking(self.fd, False)
        self.inbuf = bytearray()
        self.outbox = bytearray()

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self.connection.closed

    def close(self) -> None:
        self.connection.close()

    # -- to the worker ---------------------------------------------------------------

    def queue(self, payload: bytes) -> bool:
        """Send `payload` now or when the worker reads; False: the outbox is full (it does not read)."""
        frame = struct.pack("!i", len(payload)) + payload
        if len(self.outbox) + len(frame) > MAX_OUTBOX:
            return False
        self.outbox += frame
        self.flush()
        return True

    def flush(self) -> None:
        """As much of the outbox as the socket takes; OSError (EPIPE...) when the worker is gone."""
        while self.outbox:
            try:
                sent = os.write(self.fd, self.outbox)
            except (BlockingIOError, InterruptedError):
                return
            del self.outbox[:sent]

    # -- from the worker ---------------------------------------------------------------

    def receive(self) -> tuple[list[bytes], bool]:
        """(complete messages read now, the worker closed its end)."""
        eof = False
        for _ in range(64):  # bounded per turn: a chatty worker must not hold the loop
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                eof = True
                break
            self.inbuf += chunk
            if len(self.inbuf) > MAX_MESSAGE + 12:
                break
        return self._messages(), eof

    def _messages(self) -> list[bytes]:
        messages = []
        while len(self.inbuf) >= 4:
            size, header = struct.unpack("!i", self.inbuf[:4])[0], 4
            if size == -1:
                if len(self.inbuf) < 12:
                    break
                size, header = struct.unpack("!Q", self.inbuf[4:12])[0], 12
            if size < 0 or size > MAX_MESSAGE:
                if messages:  # those before it were fine: take them, refuse on the next read
                    break
                raise Unreadable(f"a message of {size} bytes (the limit is {MAX_MESSAGE})")
            if len(self.inbuf) < header + size:
                break
            messages.append(bytes(self.inbuf[header:header + size]))
            del self.inbuf[:header + size]
        return messages
