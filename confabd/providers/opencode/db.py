"""OpenCode's SQLite database (`opencode.db`), read-only. Stdlib only: the hook reads it too.

Where: `CONFAB_OPENCODE_DB`, else `$XDG_DATA_HOME/opencode/opencode.db`, else
`~/.local/share/opencode/opencode.db`. Tables read: `session(id, parent_id, directory)`,
`message(id, session_id, time_created, data)`, `part(id, message_id, session_id, data)`; `data` is
JSON without the row's ids. Every read opens the file read-only with a busy timeout (OpenCode
writes it in WAL mode) and closes it again; an error reads as "nothing there yet".
"""

from __future__ import annotations

import os

from .. import readonly_db

BUSY_TIMEOUT_S = 5.0
MAX_DESCENDANTS = 1000


def db_path(env=None, home: str = "") -> str:
    env = os.environ if env is None else env
    if env.get("CONFAB_OPENCODE_DB"):
        return env["CONFAB_OPENCODE_DB"]
    data = env.get("XDG_DATA_HOME") or os.path.join(home or os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "opencode", "opencode.db")


class OpenCodeDB:
    def __init__(self, path: str):
        self.path = path

    def _query(self, sql: str, args: tuple) -> list[tuple] | None:
        return readonly_db.query(self.path, sql, args, BUSY_TIMEOUT_S)

    def session(self, session_id: str) -> tuple[str, str] | None:
        """(directory, parent id or "") of a session; None when it is not (yet) there."""
        rows = self._query("SELECT COALESCE(directory, ''), COALESCE(parent_id, '') FROM session WHERE id = ?",
                           (session_id,))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def descendants(self, root: str) -> list[str]:
        rows = self._query("""
            WITH RECURSIVE d(id, depth) AS (
                SELECT id, 1 FROM session WHERE parent_id = ?
              UNION
                SELECT s.id, d.depth + 1 FROM session s JOIN d ON s.parent_id = d.id WHERE d.depth < 64)
            SELECT DISTINCT id FROM d WHERE id != ? ORDER BY id LIMIT ?""", (root, root, MAX_DESCENDANTS))
        return [str(r[0]) for r in rows or ()]

    def messages(self, session_id: str, after: str) -> list[tuple] | None:
        """(message id, message data, part id, part data) rows after message id `after`, in order."""
        return self._query("""
            SELECT m.id, m.data, p.id, p.data FROM message m LEFT JOIN part p ON p.message_id = m.id
            WHERE m.session_id = ? AND (? = '' OR m.id > ?)
            ORDER BY m.time_created, m.id, p.id""", (session_id, after, after))
