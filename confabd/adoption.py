"""Re-adopting the sessions left on disk by an earlier master (or a hook with none).

At start, each owner whose sync dir may hold States (tenancy.owners_to_adopt)
has them listed, by ID only, and then each State is read on its own, one at a
time per owner, from the loop (in system mode by a helper running as the
owner, which the loop never waits for). So:
- one bad State file (unreadable JSON, another session's `external_id`
  inside, over privileges.MAX_STATE_BYTES, a FIFO) is skipped and logged
  with its path and why; the owner's other sessions are adopted all the same;
- the master answers requests while it adopts;
- `max_sessions_per_user` holds here too: past it, the owner's remaining
  States wait on disk and are adopted as their live sessions end.
"""

from __future__ import annotations

import collections
import logging

from . import worker_api
from .privileges import PrivilegeError

log = logging.getLogger("confabd.master")


class Adoption:
    def __init__(self, sessions, tenancy, timers):
        self.sessions = sessions
        self.tenancy = tenancy
        self.timers = timers
        self.pending: dict[int, collections.deque] = {}  # owner -> IDs not read yet
        self.reading: set[int] = set()  # owners with a State being read now
        self.held: set[int] = set()  # owners whose adoption waits for the session cap
        sessions.on_slot_freed = self.slot_freed

    def start(self) -> None:
        for owner in self.tenancy.owners_to_adopt():
            try:
                self.tenancy.session_ids(owner, lambda ids, error, o=owner: self.listed(o, ids, error))
            except PrivilegeError as exc:
                log.error("uid %d: cannot list its sessions: %s", owner, exc)

    def adopt_waiting(self) -> None:
        """Every so often: users who left a note while no master answered (system mode's spool)."""
        for owner in self.tenancy.owners_waiting():
            log.info("uid %d left a note while no master ran: adopting its States", owner)
            try:
                self.list_again(owner, lambda ids, error: None)
            except PrivilegeError as exc:
                log.error("uid %d: cannot list its sessions: %s", owner, exc)

    def list_again(self, owner: int, then, counted: bool = False) -> None:
        """List the owner's States now and adopt those this master does not run (`handover`);
        then(ids queued, error). PrivilegeError: no helper could list them (`counted`: a request
        of theirs asks, so it counts against their helpers in progress)."""
        def listed(ids, error):
            if error:
                log.error("uid %d: cannot list its sessions: %s", owner, error)
                then([], error)
                return
            fresh = [i for i in ids if self.sessions.get(owner, i) is None]
            queue = self.pending.setdefault(owner, collections.deque())
            queue.extend(i for i in fresh if i not in queue)
            self.next_later(owner)
            then(fresh, "")
        self.tenancy.session_ids(owner, listed, counted=counted)

    def listed(self, owner: int, ids: list[str], error: str) -> None:
        if error:
            log.error("uid %d: cannot list its sessions: %s", owner, error)
            return
        if not ids and not self.sessions.owned_by(owner):
            self.tenancy.forget(owner)  # nothing left to adopt: forgotten until they register again
        self.pending[owner] = collections.deque(ids)
        self.next_later(owner)

    def next_later(self, owner: int) -> None:
        """The next State on the next loop turn: no recursion, and requests are served between."""
        self.timers.call_later(0, lambda: self.next(owner))

    def next(self, owner: int) -> None:
        queue = self.pending.get(owner)
        if self.sessions.stopping or not queue:
            self.pending.pop(owner, None)
            return
        if owner in self.reading:
            return
        refusal = self.tenancy.session_cap_refusal(owner, self.sessions.live_count(owner))
        if refusal:
            if owner not in self.held:
                log.warning("uid %d: %d State file(s) left on disk for now (%s); adopted as its "
                            "sessions end", owner, len(queue), refusal)
            self.held.add(owner)
            return
        self.held.discard(owner)
        external_id = queue.popleft()
        if self.sessions.get(owner, external_id) is not None:  # registered or finished meanwhile
            self.next_later(owner)
            return
        self.reading.add(owner)
        try:
            self.tenancy.session_record(owner, external_id, counted=False,
                                        then=lambda record, error: self.loaded(owner, external_id, record, error))
        except PrivilegeError as exc:
            self.loaded(owner, external_id, None, str(exc))

    def loaded(self, owner: int, external_id: str, record, error: str) -> None:
        self.reading.discard(owner)
        if error:
            log.error("session %s (owner %d): not adopted, its files are kept: %s", external_id, owner, error)
        elif record is not None and self.sessions.get(owner, external_id) is None and not self.sessions.stopping:
            state, ended = record
            try:
                self.sessions.adopt(state, owner, worker_api.SESSION_END_IN_INBOX if ended else "")
            except Exception:
                log.exception("session %s (owner %d): cannot adopt it", external_id, owner)
        self.next_later(owner)

    def slot_freed(self, owner: int) -> None:
        """One of the owner's sessions ended: a State waiting for the cap may go now."""
        if owner in self.held:
            self.next_later(owner)
