"""The local archive: an SQLite database that obeys the backend's sync rules.

When no confab backend is configured, workers deliver here instead. The
archive behaves like the server in protocol.md -- one `last_synced_line` per
(session, file), chunks must be contiguous, a replayed chunk is refused -- so
the sync engine above it is the same code with the same exactly-once
guarantee.

Design choices, and why:
- Lines are stored as raw bytes (BLOB), never decoded, so `export_session`
  gives back the transcript byte for byte, invalid UTF-8 included.
- Each chunk is one `BEGIN IMMEDIATE` transaction: a worker killed mid-chunk
  leaves either the whole chunk or none of it, never a gap.
- WAL mode plus a busy timeout: one worker process per session, many
  sessions at once, all writing the same file.
- `synchronous=FULL`: a chunk acknowledged to the engine survives power loss,
  because the transcript it came from may later be deleted by Claude Code.
- The schema is versioned with `PRAGMA user_version`; a newer schema than
  this code knows is refused rather than misread, an older one is migrated
  on open (MIGRATIONS, one transaction).
- Each session records its agent (`provider`, as init names it); an archive
  from before providers is all Claude Code's and migrates to that.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import msgspec

from ..file_names import MAX_FILE_NAME_BYTES, file_name_problem
from ..errors import ConfabdError
from ..records import ChunkMetadata, InitRequest, InitResponse, ServerFile
from .base import Chunk, PositionMismatch, RequestRejected, SessionGone

SCHEMA_VERSION = 2  # 2: sessions.provider
BUSY_TIMEOUT_S = 60.0

# The backend's limits (protocol.md), enforced here too so a session that
# archives cleanly would also upload cleanly.
FILE_TYPES = ("transcript", "agent", "workflow_journal")
EVENT_TYPES = ("session_end",)
MAX_SUMMARY_BYTES = 2048  # bytes of UTF-8, as the server counts
MAX_FIRST_USER_MESSAGE_BYTES = 8192

SCHEMA = """
CREATE TABLE sessions (
    id                 INTEGER PRIMARY KEY,
    session_id         TEXT NOT NULL UNIQUE,
    external_id        TEXT NOT NULL UNIQUE,
    transcript_path    TEXT NOT NULL,
    provider           TEXT NOT NULL DEFAULT 'claude-code',
    init_metadata      TEXT NOT NULL DEFAULT '{}',
    summary            TEXT NOT NULL DEFAULT '',
    first_user_message TEXT NOT NULL DEFAULT '',
    git_info           TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
CREATE TABLE files (
    id               INTEGER PRIMARY KEY,
    session          INTEGER NOT NULL REFERENCES sessions(id),
    file_name        TEXT NOT NULL,
    file_type        TEXT NOT NULL,
    last_synced_line INTEGER NOT NULL DEFAULT 0,
    UNIQUE (session, file_name)
);
CREATE TABLE lines (
    file    INTEGER NOT NULL REFERENCES files(id),
    line_no INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (file, line_no)
) WITHOUT ROWID;
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    session     INTEGER NOT NULL REFERENCES sessions(id),
    event_type  TEXT NOT NULL,
    timestamp   TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_at TEXT NOT NULL
);
"""

# Each step brings an archive of the version before it to the next one, in the same transaction
# as the version bump. Version 1 archives hold only Claude Code sessions (the only agent then).
MIGRATIONS = {
    2: ("ALTER TABLE sessions ADD COLUMN provider TEXT NOT NULL DEFAULT 'claude-code'",),
}


class ArchiveError(ConfabdError):
    """The archive file cannot be used (unreadable, not SQLite, newer schema)."""


# ---------------------------------------------------------------------------
# Opening the database (shared by the sink and the read-side functions).


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _create_private_file(path: str) -> None:
    """Create the parent dir (0700) and an empty file (0600) before SQLite does,
    so transcripts are never readable by other users, not even for a moment.
    SQLite gives its -wal and -shm files the main file's mode."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _connect(path: str, create: bool) -> sqlite3.Connection:
    """An autocommit connection (we issue BEGIN ourselves), WAL on, schema checked."""
    if create:
        _create_private_file(path)
    elif not os.path.exists(path):
        raise LookupError(f"no archive at {path}")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ArchiveError(f"{path}: cannot open archive ({exc})") from None
    try:
        with _setup_lock(path):
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            _ensure_schema(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ArchiveError(f"{path}: not a usable confabd archive ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def _setup_lock(path: str) -> Iterator[None]:
    """Serialize opening the archive across processes.

    Switching a new database to WAL needs an exclusive lock that SQLite does
    not wait for (its busy handler is not used there), so workers starting
    together on a fresh archive would fail with "database is locked". An
    flock on the parent directory makes them take turns; it never touches the
    database file, so it cannot disturb SQLite's own POSIX locks."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables on first use; refuse a schema from a newer confabd."""
    if _schema_version(conn, path) == SCHEMA_VERSION:
        return  # the usual case: no write lock needed just to open
    with _transaction(conn):
        version = _schema_version(conn, path)
        if version == 0:
            # executescript() would COMMIT behind our back, so one statement at a time.
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        else:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _schema_version(conn: sqlite3.Connection, path: str) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ArchiveError(
            f"{path}: archive schema version {version} is newer than this confabd "
            f"understands ({SCHEMA_VERSION}); upgrade confabd"
        )
    return version


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

    IMMEDIATE takes the write lock up front, so two writers never both read a
    file's position and then both append (the race the real server has)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# ---------------------------------------------------------------------------
# The sink.


class ArchiveSink:
    """The Sink protocol on a local SQLite file (see the module docstring)."""

    kind = "archive"

    def __init__(self, path: str):
        self.path = path
        self._conn = _connect(path, create=True)

    @property
    def capabilities_key(self) -> str:
        return "archive:" + self.path

    def capabilities(self) -> dict:
        """The archive keeps every file this client sends, workflow files included."""
        return {"workflow_files": True, "workflow_journal": True}

    def init(self, request: InitRequest) -> InitResponse:
        """Create the session for `external_id`, or resume it (same session_id)."""
        if not request.external_id:
            raise RequestRejected("archive init: external_id is required", 400)
        if not request.transcript_path:
            raise RequestRejected("archive init: transcript_path is required", 400)
        now = _now()
        with _transaction(self._conn) as conn:
            _refuse_another_agents_session(conn, request)
            conn.execute(
                "INSERT INTO sessions (session_id, external_id, transcript_path, provider, init_metadata,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (external_id) DO UPDATE SET"
                " transcript_path = excluded.transcript_path, init_metadata = excluded.init_metadata",
                (str(uuid.uuid4()), request.external_id, request.transcript_path, request.provider,
                 msgspec.json.encode(request.metadata).decode(), now, now),
            )
            session_id, rowid = conn.execute(
                "SELECT session_id, id FROM sessions WHERE external_id = ?", (request.external_id,)
            ).fetchone()
            rows = conn.execute(
                "SELECT file_name, last_synced_line FROM files WHERE session = ?", (rowid,)
            ).fetchall()
        return InitResponse(session_id, {name: ServerFile(last) for name, last in rows})

    def upload_chunk(self, chunk: Chunk) -> int:
        """Append the chunk in one transaction; return the file's new last line."""
        _validate_chunk(chunk)
        with _transaction(self._conn) as conn:
            session = _session_rowid(conn, chunk.session_id)
            file_id, held = _file_position(conn, session, chunk)
            if chunk.first_line != held + 1:
                raise PositionMismatch(
                    f"first_line must be {held + 1} (got {chunk.first_line}) - chunks must be contiguous",
                    expected_first_line=held + 1,
                )
            conn.executemany(
                "INSERT INTO lines (file, line_no, data) VALUES (?, ?, ?)",
                ((file_id, chunk.first_line + i, bytes(line)) for i, line in enumerate(chunk.lines)),
            )
            conn.execute("UPDATE files SET last_synced_line = ? WHERE id = ?", (chunk.last_line, file_id))
            _update_session_metadata(conn, session, chunk.metadata)
        return chunk.last_line

    def send_event(self, session_id: str, event_type: str, timestamp: str, payload: dict[str, Any]) -> None:
        """Store an event; like the backend, only `session_end` exists."""
        if event_type not in EVENT_TYPES:
            raise RequestRejected(
                f"archive event: invalid event_type {event_type!r} (only session_end is accepted)", 400
            )
        if not timestamp:
            raise RequestRejected("archive event: timestamp is required", 400)
        now = _now()
        with _transaction(self._conn) as conn:
            session = _session_rowid(conn, session_id)
            conn.execute(
                "INSERT INTO events (session, event_type, timestamp, payload, received_at) VALUES (?, ?, ?, ?, ?)",
                (session, event_type, timestamp, msgspec.json.encode(payload or {}).decode(), now),
            )
            conn.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ArchiveSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _validate_chunk(chunk: Chunk) -> None:
    """The backend's checks that need no database, with its messages."""
    problem = _chunk_problem(chunk)
    if problem:
        raise RequestRejected(f"archive chunk for {chunk.file_name!r}: {problem}", 400)


def _chunk_problem(chunk: Chunk) -> Optional[str]:
    problem = file_name_problem(chunk.file_name)
    if problem:
        return problem
    if chunk.file_type not in FILE_TYPES:
        return f"Invalid file_type: {chunk.file_type!r} (must be one of {', '.join(FILE_TYPES)})"
    if chunk.first_line < 1:
        return "first_line must be >= 1"
    if not chunk.lines:
        return "lines must not be empty"
    if any(b"\n" in line for line in chunk.lines):
        return "a line must not contain a newline"
    meta = chunk.metadata
    if meta is not None and len(meta.summary.encode()) > MAX_SUMMARY_BYTES:
        return f"metadata.summary exceeds {MAX_SUMMARY_BYTES} bytes"
    if meta is not None and len(meta.first_user_message.encode()) > MAX_FIRST_USER_MESSAGE_BYTES:
        return f"metadata.first_user_message exceeds {MAX_FIRST_USER_MESSAGE_BYTES} bytes"
    return None


def _session_rowid(conn: sqlite3.Connection, session_id: str) -> int:
    row = conn.execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:
        raise SessionGone(f"archive: session {session_id!r} not found", 404)
    return row[0]


def _file_position(conn: sqlite3.Connection, session: int, chunk: Chunk) -> tuple[int, int]:
    """(file row id, last_synced_line), creating the file row on its first chunk.

    The row is created inside the chunk's transaction, so a refused chunk
    rolls it back and init never reports a file with nothing in it."""
    row = conn.execute(
        "SELECT id, last_synced_line FROM files WHERE session = ? AND file_name = ?",
        (session, chunk.file_name),
    ).fetchone()
    if row is not None:
        return row[0], row[1]
    cursor = conn.execute(
        "INSERT INTO files (session, file_name, file_type) VALUES (?, ?, ?)",
        (session, chunk.file_name, chunk.file_type),
    )
    return cursor.lastrowid, 0


def _refuse_another_agents_session(conn: sqlite3.Connection, request: InitRequest) -> None:
    """One archived session per external id (as State is keyed): never lines of two agents in one."""
    row = conn.execute("SELECT provider FROM sessions WHERE external_id = ?", (request.external_id,)).fetchone()
    if row is not None and row[0] != request.provider:
        raise RequestRejected(f"archive init: session {request.external_id} is archived as a {row[0]} session, "
                              f"not {request.provider}", 409)


def _update_session_metadata(conn: sqlite3.Connection, session: int, meta: Optional[ChunkMetadata]) -> None:
    """Keep the latest non-empty value of each field, as the backend's UI shows it."""
    meta = meta or ChunkMetadata()
    git_info = msgspec.json.encode(meta.git_info).decode() if meta.git_info is not None else None
    conn.execute(
        "UPDATE sessions SET summary = COALESCE(NULLIF(?, ''), summary),"
        " first_user_message = COALESCE(NULLIF(?, ''), first_user_message),"
        " git_info = COALESCE(?, git_info), updated_at = ? WHERE id = ?",
        (meta.summary, meta.first_user_message, git_info, _now(), session),
    )


# ---------------------------------------------------------------------------
# Read side, for `confabctl archive list|export`.


def list_sessions(path: str) -> list[dict[str, Any]]:
    """Every archived session, oldest first; [] when there is no archive yet."""
    if not os.path.exists(path):
        return []
    conn = _connect(path, create=False)
    try:
        sessions = conn.execute(
            "SELECT id, external_id, session_id, transcript_path, provider, created_at, updated_at,"
            " summary, first_user_message,"
            " EXISTS (SELECT 1 FROM events e WHERE e.session = s.id AND e.event_type = 'session_end')"
            " FROM sessions s ORDER BY created_at, id"
        ).fetchall()
        return [_session_dict(conn, row) for row in sessions]
    finally:
        conn.close()


def _session_dict(conn: sqlite3.Connection, row: tuple) -> dict[str, Any]:
    rowid, external_id, session_id, transcript_path, provider, created, updated, summary, first_msg, ended = row
    files = conn.execute(
        "SELECT file_name, file_type, last_synced_line FROM files WHERE session = ? ORDER BY id", (rowid,)
    ).fetchall()
    return {
        "external_id": external_id,
        "session_id": session_id,
        "transcript_path": transcript_path,
        "provider": provider,
        "created_at": created,
        "updated_at": updated,
        "ended": bool(ended),
        "files": {name: {"file_type": ftype, "lines": lines} for name, ftype, lines in files},
        "summary": summary,
        "first_user_message": first_msg,
    }


def export_session(path: str, external_id: str, out_dir: str) -> list[str]:
    """Write each file of the session to `<out_dir>/<file_name>`, byte for byte.

    Each stored line is written followed by "\\n", exactly as the transcript
    had it. Returns the paths written. LookupError for an unknown session."""
    if not os.path.exists(path):
        raise LookupError(f"no archive at {path}")
    conn = _connect(path, create=False)
    try:
        row = conn.execute("SELECT id FROM sessions WHERE external_id = ?", (external_id,)).fetchone()
        if row is None:
            raise LookupError(f"session {external_id!r} is not in the archive {path}")
        files = conn.execute("SELECT id, file_name FROM files WHERE session = ? ORDER BY id", (row[0],)).fetchall()
        os.makedirs(out_dir, exist_ok=True)
        return [_export_file(conn, file_id, _target(out_dir, _safe_name(name))) for file_id, name in files]
    finally:
        conn.close()


def _safe_name(name: str) -> str:
    """File names were checked on the way in; check again before writing to disk."""
    if file_name_problem(name):
        raise ArchiveError(f"refusing to export a file named {name!r}")
    return name


def _target(out_dir: str, name: str) -> str:
    """`<out_dir>/<name>`, its directories made (a name like `subagents/x.jsonl`), never a link followed out."""
    target = os.path.join(out_dir, *name.split("/"))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    if os.path.realpath(parent) != os.path.join(os.path.realpath(out_dir), *name.split("/")[:-1]):
        raise ArchiveError(f"refusing to export {name!r}: a directory on its way is a link")
    return target


def _export_file(conn: sqlite3.Connection, file_id: int, target: str) -> str:
    """Stream the lines in order to a temp file, then rename: never a half file."""
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as out:
            for (data,) in conn.execute("SELECT data FROM lines WHERE file = ? ORDER BY line_no", (file_id,)):
                out.write(data)
                out.write(b"\n")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
