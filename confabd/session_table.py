"""The master's sessions by (owner, external_id), counting each owner's live ones as they change.

Live: in the table and not FAILED, what max_sessions_per_user caps. Every registration asks
for the count; a scan of the table per registration cost the master 5-10 % of its busy time at
500-1,000 sessions (bench/RESULTS.md). Here the count moves when a session comes in (item
assignment), goes (pop, del) or enters or leaves FAILED (Session.phase tells `tally`).
"""

from __future__ import annotations

import collections

from .worker_api import Phase


class SessionTable(dict):
    def __init__(self):
        super().__init__()
        self.live: collections.Counter = collections.Counter()  # owner -> sessions not FAILED

    def live_count(self, owner: int) -> int:
        return self.live[owner]

    def __setitem__(self, key, session) -> None:
        self._leave(self.get(key))
        super().__setitem__(key, session)
        session.tally = self
        self.count(session, +1)

    def pop(self, key, *default):
        session = super().pop(key, *default)
        if session is not None and session.tally is self:
            self._leave(session)
        return session

    def __delitem__(self, key) -> None:
        self.pop(key)

    def _leave(self, session) -> None:
        if session is not None:
            self.count(session, -1)
            session.tally = None

    def count(self, session, step: int) -> None:
        """`session` (in the table) came or went: it counts unless it is FAILED."""
        if session.phase != Phase.FAILED:
            self.live[session.owner] += step
            if not self.live[session.owner]:
                del self.live[session.owner]

    def _unsupported(self, *args, **kwargs):
        raise TypeError("a SessionTable is changed by item assignment, pop and del only (they keep its counts)")

    update = setdefault = popitem = clear = _unsupported
