"""Another program's SQLite database, read and never written (Codex's state DB, OpenCode's opencode.db)."""

from __future__ import annotations

import os
import sqlite3
import stat
from urllib.parse import quote


def query(path: str, sql: str, args: tuple, busy_timeout_s: float) -> list[tuple] | None:
    """The rows of one read-only query; None when `path` is not a regular file or SQLite fails
    (missing, locked past the timeout, another schema): callers treat that as "not known yet"."""
    try:
        if not path or not stat.S_ISREG(os.stat(path).st_mode):
            return None
        # quoted: a '?' or '#' in the path would otherwise end the file name inside the URI
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=busy_timeout_s)
    except (OSError, sqlite3.Error):
        return None
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
