"""The control protocol between confabctl (and the hooks) and the master.

Transport: a Unix stream socket. Framing: every message is a 4-byte big-endian
length followed by that many bytes of JSON (UTF-8). One request, then one reply,
in order; a client may send several requests on one connection.

Requests are a tagged union on the field `type`; every request carries `v`,
the protocol version (1). Replies are one JSON object with at least
`ok` (bool) and `error` (a sentence, or null).

The master decodes with msgspec (this module); the hook client encodes and
decodes the same JSON with the stdlib (`confabd.client`), to stay light.
Documented in docs/CONTROL.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional, Union

import msgspec

# One definition for both ends; client.py stays stdlib-only.
# MAX_FRAME (1 MiB): a request bigger than this is refused; MAX_REPLY_FRAME: what a client accepts as a reply.
from .client import MAX_FRAME, MAX_REPLY_FRAME, PROTOCOL_VERSION  # noqa: F401 - re-exported

HEADER_SIZE = 4


class Request(msgspec.Struct, tag_field="type", kw_only=True, forbid_unknown_fields=False):
    v: int = PROTOCOL_VERSION


class Register(Request, tag="register"):
    """Start syncing a session (no-op when it already has a live worker).

    `hook_pid`/`parent_pid`/`claude_pid_hint` come from the hook process (its own
    pid, its parent, and CLAUDE_PID from its environment); the master finds the
    Claude Code process among them. With `hook_pid` 0 (confabctl start),
    `parent_pid` is taken as the Claude Code PID itself (0: no parent watch).
    """

    external_id: str
    transcript_path: str
    cwd: str = ""
    parent_pid: int = 0
    claude_pid_hint: int = 0
    hook_pid: int = 0
    provider: str = "claude-code"  # the agent that announced the session (confabd.providers)
    model: str = ""  # the model its hook named (Cursor), sent on every transcript chunk
    # The session's Claude Code config dir when it is not the default one (bindings.py): it picks the backend.
    config_dir: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class Finish(Request, tag="finish"):
    """Finish a session (final sync, session_end, cleanup). `wait`: reply when done."""

    external_id: str
    wait: bool = False
    reason: str = ""  # e.g. "SessionEnd"; default "stop requested"
    # The SessionEnd hook input, sent along only when the hook could not record
    # it in the inbox (e.g. a full disk), so the session_end event keeps it.
    hook_input: Optional[dict[str, Any]] = None


class Status(Request, tag="status"):
    external_id: Optional[str] = None


class Ping(Request, tag="ping"):
    pass


class Shutdown(Request, tag="shutdown"):
    pass


class Retry(Request, tag="retry"):
    """A failed or backing-off session (or one with a blocked file) is tried again now."""

    external_id: str


class Forget(Request, tag="forget"):
    """A session that has no worker running is dropped: State and inbox removed, no session_end."""

    external_id: str


class Reload(Request, tag="reload"):
    """Re-read the settings, as SIGHUP does; the reply says whether they were accepted."""


class Adopt(Request, tag="adopt"):
    """Adopt the caller's States that this master does not run (`confabctl handover`)."""


class Metrics(Request, tag="metrics"):
    """The Prometheus text of what `status` counts (confabd/metrics.py)."""


AnyRequest = Union[Register, Finish, Status, Ping, Shutdown, Retry, Forget, Reload, Adopt, Metrics]

_decoder = msgspec.json.Decoder(AnyRequest)
_encoder = msgspec.json.Encoder()


class FrameTooLarge(ValueError):
    pass


def decode_request(body: bytes) -> AnyRequest:
    """The request in `body`; ValueError with a readable message otherwise."""
    try:
        request = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"malformed request: {exc}") from None
    if request.v != PROTOCOL_VERSION:
        raise ValueError(
            f"unsupported protocol version {request.v} (this master speaks {PROTOCOL_VERSION})"
        )
    return request


def encode_frame(message) -> bytes:
    """Length-prefixed JSON of a dict or Struct."""
    body = _encoder.encode(message)
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def reply(ok: bool = True, error: Optional[str] = None, **fields) -> dict:
    return {"ok": ok, "error": error, **fields}


def error(message: str, **fields) -> dict:
    return reply(False, message, **fields)


class FrameBuffer:
    """Accumulates bytes from a stream and yields complete frame bodies."""

    __slots__ = ("data",)

    def __init__(self):
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def has_frame(self) -> bool:
        """A complete frame (or a header that is refused) waits to be taken."""
        if len(self.data) < HEADER_SIZE:
            return False
        size = int.from_bytes(self.data[:HEADER_SIZE], "big")
        return size > MAX_FRAME or len(self.data) >= HEADER_SIZE + size

    def next_frame(self) -> Optional[bytes]:
        """The next complete body, None if incomplete; FrameTooLarge if the header is too big."""
        if len(self.data) < HEADER_SIZE:
            return None
        size = int.from_bytes(self.data[:HEADER_SIZE], "big")
        if size > MAX_FRAME:
            raise FrameTooLarge(f"request of {size} bytes exceeds the {MAX_FRAME}-byte limit")
        end = HEADER_SIZE + size
        if len(self.data) < end:
            return None
        body = bytes(self.data[HEADER_SIZE:end])
        del self.data[:end]
        return body
