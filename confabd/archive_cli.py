"""`confabctl archive list [--json]` and `confabctl archive export ID [--out DIR]`.

Thin presentation over the read side of confabd.sinks.archive: the functions
here format and report; they return the process exit code (0 ok, 1 error)
and put error messages on stderr, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from typing import Any, Optional, TextIO

import msgspec

from .errors import ConfabdError
from .records import InvalidExternalId, validate_external_id
from .sinks.archive import export_session, list_sessions

COLUMNS = ("EXTERNAL ID", "AGENT", "FILES", "LINES", "UPDATED")
NUMERIC = (False, False, True, True, False)
MIN_TEXT_WIDTH = 10


def cmd_list(archive_path: str, as_json: bool, out: Optional[TextIO] = None) -> int:
    """List archived sessions: a table, or one JSON object with `as_json`.

    `out` defaults to the sys.stdout of the moment of the call (not of import)."""
    out = out or sys.stdout
    try:
        sessions = list_sessions(archive_path)
    except (ConfabdError, OSError, sqlite3.Error) as exc:
        return _fail(f"cannot read archive: {exc}")
    if as_json:
        document = msgspec.json.encode({"archive": archive_path, "sessions": sessions})
        out.write(msgspec.json.format(document, indent=2).decode() + "\n")
    elif not sessions:
        out.write(f"no sessions in archive {archive_path}\n")
    else:
        out.write(_table(sessions, shutil.get_terminal_size((120, 24)).columns))
    return 0


def cmd_export(archive_path: str, external_id: str, out_dir: Optional[str] = None,
               out: Optional[TextIO] = None) -> int:
    """Write the session's files to `out_dir` (default ./<external_id>/) and name them."""
    out = out or sys.stdout
    try:
        target = out_dir or _default_out_dir(external_id)
        written = export_session(archive_path, external_id, target)
    except LookupError as exc:
        return _fail(str(exc))
    except (ConfabdError, OSError, sqlite3.Error) as exc:
        return _fail(f"cannot export session {external_id!r}: {exc}")
    for path in written:
        out.write(path + "\n")
    return 0


def _default_out_dir(external_id: str) -> str:
    """./<external_id>/ -- only for an ID that is safe as a directory name."""
    try:
        return os.path.join(".", validate_external_id(external_id))
    except InvalidExternalId as exc:
        raise LookupError(f"{exc}; give --out DIR") from None


def _fail(message: str) -> int:
    sys.stderr.write(f"confabctl archive: {message}\n")
    return 1


# ---------------------------------------------------------------------------
# The table.


def _table(sessions: list[dict[str, Any]], width: int) -> str:
    """Fixed columns, then the summary (or first user message) cut to the terminal."""
    rows = [_row(s) for s in sessions]
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(COLUMNS))]
    used = sum(widths) + 2 * len(widths)
    text_width = max(MIN_TEXT_WIDTH, width - used)
    lines = [_format_row(COLUMNS, widths, "SUMMARY")]
    lines += [_format_row(r[:-1], widths, _cut(r[-1], text_width)) for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _row(session: dict[str, Any]) -> tuple[str, ...]:
    files = session["files"]
    total = sum(f["lines"] for f in files.values())
    updated = session["updated_at"][:16].replace("T", " ")
    text = session["summary"] or session["first_user_message"]
    if session["ended"]:
        text = "[ended] " + text
    return (session["external_id"], session["provider"], str(len(files)), str(total), updated, text)


def _format_row(cells, widths, text: str) -> str:
    padded = [cell.rjust(w) if numeric else cell.ljust(w) for cell, w, numeric in zip(cells, widths, NUMERIC)]
    return "  ".join(padded) + "  " + text


def _cut(text: str, width: int) -> str:
    """One line, at most `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
