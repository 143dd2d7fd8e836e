"""The one small interface both sinks implement, and the errors they raise.

A sink is where a session's lines go: the confab backend over HTTP, or the
local SQLite archive. Both obey protocol.md's rules (per-file
`last_synced_line`, contiguous chunks, a replayed chunk refused), so the sync
engine above them is the same code and keeps the same exactly-once guarantee.

Sinks never retry by themselves: after a failed chunk the engine must ask
`init` again before sending anything (the chunk may have been committed even
though its answer was lost). Retrying and backing off is the engine's job.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import msgspec

from ..records import ChunkMetadata, InitRequest, InitResponse


class Chunk(msgspec.Struct, frozen=True):
    """Consecutive lines of one file, starting at `first_line` (1-based).

    Lines are raw bytes without their trailing newline: the archive keeps them
    byte-for-byte; the HTTP sink must turn them into JSON strings.
    """

    session_id: str
    file_name: str
    file_type: str
    first_line: int
    lines: list[bytes]
    metadata: Optional[ChunkMetadata] = None
    # The first lines already encoded by the sink's `encode_lines` (Batch.encoded: one
    # (line count, bytes) per block), so the HTTP sink streams them instead of
    # encoding the chunk again. The archive ignores it.
    encoded: tuple = ()

    @property
    def last_line(self) -> int:
        return self.first_line + len(self.lines) - 1


# ---------------------------------------------------------------------------
# Errors: one class per row of protocol.md's status table.


class SinkError(Exception):
    """Base class. str(exc) never contains the API key."""

    status: Optional[int] = None

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class PositionMismatch(SinkError):
    """400 "first_line must be N (got M)": re-run init and resume from the server's line."""

    def __init__(self, message: str, expected_first_line: Optional[int] = None):
        super().__init__(message, 400)
        self.expected_first_line = expected_first_line


class AuthFailed(SinkError):
    """401/403: stop uploading, re-read credentials next cycle, keep everything local."""


class SessionGone(SinkError):
    """404: the session was deleted on the backend (3 in a row finish it)."""


class PayloadTooLarge(SinkError):
    """413 from a proxy: split the chunk and retry."""


class RequestRejected(SinkError):
    """Other 400s and 415: the request itself is wrong; retrying it unchanged cannot help."""


class Unavailable(SinkError):
    """5xx, 429, timeout, refused connection, DNS failure: back off and retry forever.

    `retry_after` is the server's Retry-After in seconds, when it sent one.
    `unreachable` is not "" when the backend could not be reached at all, and
    says why in a few words ("connection refused": sinks/causes.py).
    """

    def __init__(self, message: str, status: Optional[int] = None, retry_after: Optional[float] = None,
                 unreachable: str = ""):
        super().__init__(message, status)
        self.retry_after = retry_after
        self.unreachable = unreachable


# ---------------------------------------------------------------------------


class Sink(Protocol):
    """What the sync engine needs from a destination."""

    kind: str  # "http" or "archive"

    def init(self, request: InitRequest) -> InitResponse:
        """Create or resume the session; `files` is the sink's truth about what it holds."""

    def upload_chunk(self, chunk: Chunk) -> int:
        """Append the chunk; return the new `last_synced_line` of that file."""

    def send_event(self, session_id: str, event_type: str, timestamp: str, payload: dict[str, Any]) -> None:
        """Record an event (only `session_end` exists)."""

    def close(self) -> None:
        """Release connections / database handles."""
