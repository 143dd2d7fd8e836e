"""Is each backend reachable? Judged per backend from every session's reports, said once.

An outage is one fact about one backend, not forty facts about forty
sessions: the workers log their own retries at debug level only, and the
master, which hears every worker's `Tally` (delivery.py), logs
- one warning when a backend becomes unreachable (its cause, how many
  sessions are waiting),
- a summary every SUMMARY_EVERY_S while it stays so ("still unreachable for
  N sessions, since T"),
- one line when it answers again (and how long it was away).

A backend is unreachable when the latest request any session made to it
could not reach it (sinks/causes.py says what counts: refused, reset, DNS,
TLS, timeout, a gateway's 502/503/504), and reachable again as soon as one
session's request gets an answer. Idle sessions send nothing, so they learn
nothing; the master tells their `status` what the others found (`down`).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional

from .delivery import Tally

log = logging.getLogger("confabd.master")

SUMMARY_EVERY_S = 600.0


def clock_time(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds // 60 % 60} min"


class Backend:
    """What is known of one backend (a sink target)."""

    def __init__(self, target: str):
        self.target = target
        self.reached_at = 0.0  # the latest answer any session got
        self.failed_at = 0.0  # the latest request that could not reach it
        self.cause = ""
        self.failing: dict = {}  # session key -> cause: sessions whose latest request failed
        self.down_since = 0.0  # not 0: judged unreachable (and said so) since then
        self.next_summary = 0.0

    @property
    def down(self) -> bool:
        return bool(self.down_since)


class BackendHealth:
    def __init__(self, clock: Callable[[], float] = time.time, summary_every: float = SUMMARY_EVERY_S):
        self.clock = clock
        self.summary_every = summary_every
        self.backends: dict[str, Backend] = {}

    def observe(self, key, target: str, tally: Tally) -> None:
        """A session's report: what its latest requests to `target` found."""
        if not target:
            return
        b = self.backends.setdefault(target, Backend(target))
        b.reached_at = max(b.reached_at, tally.reached_at)
        if tally.unreachable:
            b.failing[key] = tally.unreachable
            if tally.unreachable_at >= b.failed_at:
                b.failed_at, b.cause = tally.unreachable_at, tally.unreachable
        else:
            b.failing.pop(key, None)
        self._judge(b)

    def forget_except(self, live_keys: Iterable) -> None:
        """Sessions that ended wait for nothing any more."""
        live = set(live_keys)
        for b in self.backends.values():
            for key in [k for k in b.failing if k not in live]:
                del b.failing[key]
            if b.down and not b.failing:
                log.info("backend %s: no session is waiting for it any more (unreachable since %s)",
                         b.target, clock_time(b.down_since))
                b.down_since = 0.0

    def tick(self) -> None:
        """The summary of every backend still unreachable, when it is due."""
        now = self.clock()
        for b in self.backends.values():
            if b.down and now >= b.next_summary:
                log.warning("backend %s still unreachable (%s) for %d session(s), since %s (%s)",
                            b.target, b.cause, len(b.failing), clock_time(b.down_since),
                            duration(now - b.down_since))
                b.next_summary = now + self.summary_every

    def down(self, target: str) -> Optional[Backend]:
        b = self.backends.get(target)
        return b if b is not None and b.down else None

    def _judge(self, b: Backend) -> None:
        unreachable = bool(b.failing) and b.failed_at > b.reached_at
        now = self.clock()
        if unreachable and not b.down:
            b.down_since = min(now, b.failed_at) if b.failed_at else now
            b.next_summary = now + self.summary_every
            log.warning("backend %s is unreachable (%s): %d session(s) cannot deliver; their lines wait "
                        "and are retried, nothing is lost", b.target, b.cause, len(b.failing))
        elif not unreachable and b.down and b.reached_at > b.failed_at:
            log.info("backend %s is reachable again, after %s (unreachable since %s)", b.target,
                     duration(b.reached_at - b.down_since), clock_time(b.down_since))
            b.down_since = 0.0
