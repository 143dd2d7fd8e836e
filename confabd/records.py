"""The data model, declared once: State and inbox records on disk, hook input,
and the wire messages of the confab incremental-sync API.

Every record is a msgspec Struct, so encoding and validation happen in one step
(`msgspec.json.decode(data, type=State)` either gives a valid State or raises).
Field names of State follow the original Go client so its tools can read ours.
Unknown fields are ignored on decode: newer writers may add fields.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Optional

import msgspec

# State is read back by a later worker: a value no writer of ours produces (a
# negative offset, a count) is refused on decode rather than failing later.
NonNegative = Annotated[int, msgspec.Meta(ge=0)]

# ---------------------------------------------------------------------------
# External IDs become file names, so they are validated before anything else.

EXTERNAL_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")


class InvalidExternalId(ValueError):
    """An external ID that cannot safely become a file name."""


def validate_external_id(external_id: object) -> str:
    """Return the ID unchanged if it is `[A-Za-z0-9._-]{1,128}` not starting with '.'."""
    if not isinstance(external_id, str) or not EXTERNAL_ID_RE.match(external_id):
        shown = repr(external_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidExternalId(
            f"invalid session id {shown}: expected 1-128 characters of "
            "[A-Za-z0-9._-], not starting with '.'"
        )
    return external_id


# ---------------------------------------------------------------------------
# On disk: State (one JSON object per session) and the inbox (JSON Lines).


class FileProgress(msgspec.Struct, omit_defaults=True):
    """What the worker last knew of one file. A cache: the server is the truth.

    `byte_offset` is where line `last_synced_line + 1` starts, valid only while
    the file is the same inode, at least that long, and the bytes before it
    still hash to `tail` (see transcript.py). `chunks` counts the chunks this
    client had accepted for the file (the server caps them per file).
    """

    last_synced_line: NonNegative = 0
    byte_offset: NonNegative = 0
    inode: NonNegative = 0
    file_type: str = "transcript"
    path: str = ""
    tail: str = ""
    chunks: NonNegative = 0
    # The file's sidecar (a provider's extra chunk metadata, e.g. codex_rollout) was
    # accepted with one of its chunks; until then every chunk carries it.
    sidecar_sent: bool = False


class Backoff(msgspec.Struct, omit_defaults=True):
    """Retrying an unavailable sink, across cycles and worker restarts.

    `failures` in a row; `retry_at` (Unix time) is the earliest next attempt;
    `delay` the wait chosen after the last failure (shown, and tested)."""

    failures: NonNegative = 0
    retry_at: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class State(msgspec.Struct, omit_defaults=True):
    """One session's State file: `<sync dir>/<external_id>.json`."""

    external_id: str
    transcript_path: str
    cwd: str = ""
    provider: str = "claude-code"  # the agent (confabd.providers); the Go client's field too
    model: str = ""  # the model the agent's start hook named (Cursor): on every transcript chunk
    pid: NonNegative = 0
    parent_pid: NonNegative = 0
    inbox_path: str = ""
    started_at: str = ""
    confab_session_id: str = ""
    # confabd's additions; the original client's readers ignore them.
    parent_create_time: float = 0.0
    worker_restarts: NonNegative = 0
    phase: str = "waiting"
    finishing: bool = False
    files: dict[str, FileProgress] = {}
    last_sync_at: str = ""
    last_error: str = ""
    sink: str = ""
    config_dir: str = ""  # the session's credential binding (bindings.py); "": the default backend
    # Agent IDs named in synced lines whose file was not found yet: kept until it is
    # (a restart's discovery never sees the naming line again).
    pending_agents: list[str] = []
    # Files that cannot be delivered past a line: {file name: why}. While any is
    # here the session does not finish (no session_end, State kept).
    blocked: dict[str, str] = {}
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    # Which run of the session this is: "" for the first, else the token of the NextRun
    # record that started it (a `--continue` registered while the previous run finished).
    run_id: str = ""
    # This run's session_end was accepted: a finish restarted after it sends none again.
    session_end_sent: bool = False


class NextRun(msgspec.Struct, omit_defaults=True):
    """A registration that arrived while the session's run was finishing (`claude
    --continue` right after SessionEnd): the run to start once that one is done."""

    run_id: str
    transcript_path: str
    cwd: str = ""
    parent_pid: NonNegative = 0
    parent_create_time: float = 0.0


class InboxRecord(msgspec.Struct, omit_defaults=True):
    """One line of `<sync dir>/<external_id>.inbox.jsonl`.

    `type` is "session_end" (the SessionEnd hook's input) or "next_run" (`next_run`
    set: the master, for a registration while finishing). Records after a next_run
    record belong to that run (runs.py)."""

    type: str
    timestamp: str = ""
    hook_input: dict[str, Any] = {}
    next_run: Optional[NextRun] = None


# ---------------------------------------------------------------------------
# Hook input: read tolerantly (unknown fields kept in the raw payload).


class HookInput(msgspec.Struct):
    session_id: str
    transcript_path: str = ""
    cwd: str = ""
    hook_event_name: str = ""
    source: str = ""
    reason: str = ""
    permission_mode: str = ""


# ---------------------------------------------------------------------------
# Wire messages of protocol.md.


class GitRemote(msgspec.Struct, frozen=True):
    name: str
    fetch_url: str = ""
    push_url: str = ""


class GitInfo(msgspec.Struct, omit_defaults=True, frozen=True):
    """What the newer confab client sends of the session's repository (server: `git_info`)."""

    repo_url: str = ""
    branch: str = ""
    commit_sha: str = ""
    commit_message: str = ""
    author: str = ""
    is_dirty: Optional[bool] = None  # None: not known (omitted)
    remotes: tuple[GitRemote, ...] = ()
    tracking_remote: str = ""


class InitMetadata(msgspec.Struct, omit_defaults=True, frozen=True):
    cwd: str = ""
    git_info: Optional[GitInfo] = None
    hostname: str = ""
    username: str = ""


class InitRequest(msgspec.Struct, frozen=True):
    external_id: str
    transcript_path: str
    metadata: InitMetadata = InitMetadata()
    provider: str = "claude-code"  # the server keys sessions by (user, provider, external id)


class ServerFile(msgspec.Struct, frozen=True):
    last_synced_line: int = 0


class InitResponse(msgspec.Struct, frozen=True):
    session_id: str
    files: dict[str, ServerFile] = {}


class CodexRollout(msgspec.Struct, omit_defaults=True, frozen=True):
    """The `codex_rollout` sidecar of a Codex rollout's chunk (providers.md §3.4)."""

    thread_uuid: str
    rollout_path: str
    parent_thread_uuid: str = ""  # omitted for a root (the server refuses "")
    cwd: str = ""
    model: str = ""
    source: str = ""
    thread_source: str = ""
    agent_path: str = ""
    agent_role: str = ""
    agent_nickname: str = ""


class ChunkMetadata(msgspec.Struct, omit_defaults=True, frozen=True):
    git_info: Optional[GitInfo] = None
    summary: str = ""
    first_user_message: str = ""
    codex_rollout: Optional[CodexRollout] = None
    latest_message_at: str = ""  # RFC 3339, UTC (Cursor: its lines carry no timestamps)
    model: str = ""


class ChunkRequest(msgspec.Struct, omit_defaults=True, frozen=True):
    session_id: str
    file_name: str
    file_type: str
    first_line: int
    lines: list[str]
    metadata: Optional[ChunkMetadata] = None


class ChunkResponse(msgspec.Struct, frozen=True):
    last_synced_line: int


class EventRequest(msgspec.Struct, frozen=True):
    session_id: str
    event_type: str
    timestamp: str
    payload: dict[str, Any] = {}


class ErrorReply(msgspec.Struct, frozen=True):
    error: str = ""
