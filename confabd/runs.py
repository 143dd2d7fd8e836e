"""Runs of one session: which inbox records belong to which run.

A session id can run more than once: `claude --continue` registers it again,
possibly while its previous run is still finishing. The master then appends a
`next_run` record (records.NextRun, with a fresh `run_id`) to the session's
inbox, so the registration is on disk from the moment it arrives. The inbox is
read as a sequence of runs: records up to the first next_run record that is
not the reader's own belong to the reader's run; from that record on, to a
later run (its SessionEnd is never the earlier run's payload). The finishing
run hands over: its State is replaced by the next run's (worker.py), and the
next master adopts that like any other State.

A next_run record is a run's own when it carries the run's `run_id`, or when
it names the run's own Claude Code process (the prompt hook registers again
on every prompt: that is the same run, not a new one).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from .records import InboxRecord, NextRun

NEXT_RUN = "next_run"


class RunIdentity(NamedTuple):
    run_id: str = ""
    parent_pid: int = 0
    parent_create_time: float = 0.0

    def owns(self, run: NextRun) -> bool:
        if self.run_id and run.run_id == self.run_id:
            return True
        return bool(self.parent_pid) and (run.parent_pid, run.parent_create_time) == (
            self.parent_pid, self.parent_create_time)


def split(records: list[InboxRecord], me: RunIdentity) -> tuple[list[InboxRecord], list[InboxRecord]]:
    """(this run's records, a later run's records from its next_run record on).

    Records before this run's own next_run record are an earlier run's leftovers
    (that run claimed what it used): they are not this run's."""
    start = 0
    for i, record in enumerate(records):
        if record.type == NEXT_RUN and record.next_run is not None and me.owns(record.next_run):
            start = i + 1
    mine = []
    for i in range(start, len(records)):
        record = records[i]
        if record.type == NEXT_RUN and record.next_run is not None and not me.owns(record.next_run):
            return mine, records[i:]
        if record.type != NEXT_RUN:
            mine.append(record)
    return mine, []


def next_run(records: list[InboxRecord], me: RunIdentity) -> Optional[NextRun]:
    """The first later run registered in `records`, None when there is none."""
    later = split(records, me)[1]
    return later[0].next_run if later else None
