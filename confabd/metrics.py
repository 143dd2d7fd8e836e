"""The master's numbers: one source for `status --json` and the Prometheus text.

Every worker report carries its `Tally` (delivery.py), counts since that
worker started. What a report adds to the previous report of the same worker
is added to the totals, per session and per (owner, sink), so the totals only
grow: a restarted worker (a new pid) starts from zero without taking anything
back, and a session that ends keeps its part in its sink's totals. A new pid
for the same session is a worker restart. Counters start at 0 with the master
(Prometheus' rate() handles a restart).

`confabctl metrics` prints `prometheus()` (the control socket's `metrics`
request): the text exposition format, version 0.0.4.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

from . import __version__
from .backend_health import BackendHealth, clock_time
from .delivery import Tally
from .worker_api import Phase

UNREACHABLE = "unreachable"  # a state of the master's: see status_fields
KNOWN_STATES = ("waiting", "connecting", "syncing", UNREACHABLE, "finishing", "backoff", "failed")
# A worker runs as its user (system mode), who may make it report anything: what the master keeps
# from reports is bounded. Sink names are cut short, an owner has at most MAX_SINKS_PER_OWNER of
# them (more are counted as OTHER_SINK), and error kinds are those causes.error_kind gives.
MAX_SINK_NAME = 512
MAX_SINKS_PER_OWNER = 8
OTHER_SINK = "(other)"
ERROR_KINDS = frozenset(("unreachable", "rate_limited", "server_error", "unreadable_answer", "auth",
                         "session_gone", "too_large", "position", "rejected", "other"))


class Totals:
    __slots__ = ("lines", "bytes", "chunks", "errors", "restarts", "last_delivery")

    def __init__(self):
        self.lines = self.bytes = self.chunks = self.restarts = 0
        self.errors: dict[str, int] = {}
        self.last_delivery = 0.0  # time.time() of the latest confirmed chunk

    def add(self, before: Tally, now: Tally, at: float) -> None:
        lines = max(0, now.lines - before.lines)
        self.lines += lines
        self.bytes += max(0, now.bytes - before.bytes)
        self.chunks += max(0, now.chunks - before.chunks)
        for kind, n in now.errors.items():
            added = n - before.errors.get(kind, 0)
            if added > 0:
                kind = kind if kind in ERROR_KINDS else "other"
                self.errors[kind] = self.errors.get(kind, 0) + added
        if lines:
            self.last_delivery = at

    def merge(self, other: "Totals") -> None:
        self.lines += other.lines
        self.bytes += other.bytes
        self.chunks += other.chunks
        self.restarts += other.restarts
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        self.last_delivery = max(self.last_delivery, other.last_delivery)


class _Seen:
    """The worker a session's last report came from, and that report's tally."""

    __slots__ = ("session", "pid", "tally", "totals", "sink")

    def __init__(self, session):
        self.session, self.pid, self.tally, self.totals = session, 0, Tally(), Totals()
        self.sink = ""  # the last sink its workers named (a new worker names it once it has built it)


def _confirmed_and_complete(report) -> tuple[dict[str, int], dict[str, int]]:
    confirmed = dict(report.files) if report else {}
    complete = dict(report.complete) if report else {}
    for name, n in confirmed.items():  # a file the sink holds but we cannot count: not behind
        complete.setdefault(name, n)
    return confirmed, complete


def behind(report) -> int:
    confirmed, complete = _confirmed_and_complete(report)
    return sum(max(0, n - confirmed.get(name, 0)) for name, n in complete.items())


class Metrics:
    def __init__(self, health: BackendHealth, clock: Callable[[], float] = time.time):
        self.health = health
        self.clock = clock
        self.seen: dict = {}  # session key -> _Seen
        self.by_sink: dict[tuple[int, str], Totals] = {}  # (owner, sink) -> totals, never shrinking

    # -- reports in ----------------------------------------------------------------

    def take_report(self, session, report) -> None:
        seen = self.seen.get(session.key)
        if seen is None or seen.session is not session:
            seen = self.seen[session.key] = _Seen(session)
        pid = session.proc.pid if session.proc is not None else 0
        seen.sink = self._sink_name(session.owner, report.sink) or seen.sink
        # A new session's first report names no sink yet (and has counted nothing).
        sink = self.by_sink.setdefault((session.owner, seen.sink), Totals()) if seen.sink else Totals()
        if pid != seen.pid:
            if seen.pid:
                seen.totals.restarts += 1
                sink.restarts += 1
            seen.pid, seen.tally = pid, Tally()
        now = self.clock()
        seen.totals.add(seen.tally, report.tally, now)
        sink.add(seen.tally, report.tally, now)
        seen.tally = report.tally
        self.health.observe(session.key, seen.sink, report.tally)

    def _sink_name(self, owner: int, sink: str) -> str:
        sink = sink[:MAX_SINK_NAME]
        if not sink or (owner, sink) in self.by_sink:
            return sink
        if sum(1 for o, _ in self.by_sink if o == owner) >= MAX_SINKS_PER_OWNER:
            return OTHER_SINK
        return sink

    def forget_except(self, live_keys: Iterable) -> None:
        live = set(live_keys)
        for key in [k for k in self.seen if k not in live]:
            del self.seen[key]
        self.health.forget_except(live)

    # -- what status shows -------------------------------------------------------------

    def status_fields(self, session) -> dict:
        """The truth `status` adds to a session's row: where its lines go, how far behind it is,
        what was delivered, and `unreachable` when its backend cannot be reached."""
        report = session.report
        confirmed, complete = _confirmed_and_complete(report)
        seen = self.seen.get(session.key)
        if seen is not None and seen.session is not session:
            seen = None
        totals = seen.totals if seen is not None else Totals()
        target = seen.sink if seen is not None else ""
        fields = {
            "sink": target or None,
            "lines_confirmed": sum(confirmed.values()),
            "lines_complete": sum(complete.values()),
            "behind": behind(report),
            "files": {name: {"last_synced_line": confirmed.get(name, 0), "complete_lines": n}
                      for name, n in complete.items()},
            "delivered": {"lines": totals.lines, "bytes": totals.bytes, "chunks": totals.chunks,
                          "errors": dict(totals.errors)},
            "unreachable_since": None,
        }
        own = report.tally.unreachable if report else ""
        down = self.health.down(target) if target else None
        if session.phase in (Phase.CONNECTING, Phase.SYNCING) and (own or down):
            fields["state"] = UNREACHABLE
            since = down.down_since if down else report.tally.unreachable_at
            fields["unreachable_since"] = clock_time(since)
            if not (session.last_error or (report and report.last_error)):
                fields["last_error"] = (f"cannot reach {target} ({down.cause if down else own}) since "
                                        f"{clock_time(since)}; nothing to send yet")
        return fields

    def sink_totals(self, visible: Callable[[int], bool], sessions: list) -> list[tuple[str, Totals, int, object]]:
        """[(sink, totals, lines behind, its Backend when unreachable else None)] for the owners
        `visible` admits (system mode: a user sees only their own sinks and counts)."""
        merged: dict[str, Totals] = {}
        for (owner, sink), totals in self.by_sink.items():
            if sink and visible(owner):
                merged.setdefault(sink, Totals()).merge(totals)
        lag: dict[str, int] = {}
        for s in sessions:
            seen = self.seen.get(s.key)
            target = seen.sink if seen is not None and seen.session is s else ""
            if target:
                lag[target] = lag.get(target, 0) + behind(s.report)
                merged.setdefault(target, Totals())
        return [(sink, t, lag.get(sink, 0), self.health.down(sink)) for sink, t in sorted(merged.items())]

    @staticmethod
    def sinks_json(totals: list) -> list[dict]:
        """`status --json`'s `sinks`: the same numbers as the Prometheus text."""
        return [{"sink": sink, "lines_delivered": t.lines, "bytes_delivered": t.bytes, "chunks": t.chunks,
                 "errors": dict(t.errors), "worker_restarts": t.restarts, "behind": lag,
                 "reachable": down is None,
                 "unreachable_since": clock_time(down.down_since) if down else None,
                 "last_delivery_at": clock_time(t.last_delivery) if t.last_delivery else None}
                for sink, t, lag, down in totals]

    @staticmethod
    def states(rows: list[dict]) -> dict[str, int]:
        """Sessions by state (every known state, 0 included), from status rows."""
        states: dict[str, int] = dict.fromkeys(KNOWN_STATES, 0)
        for row in rows:
            states[str(row["state"])] = states.get(str(row["state"]), 0) + 1
        return states

    @staticmethod
    def providers(rows: list[dict]) -> dict[str, int]:
        """Sessions by agent (every provider confabd ships, 0 included), from status rows."""
        from .providers import NAMES

        counts: dict[str, int] = dict.fromkeys(NAMES, 0)
        for row in rows:
            provider = str(row.get("provider") or "claude-code")
            counts[provider] = counts.get(provider, 0) + 1
        return counts

    # -- Prometheus ------------------------------------------------------------------

    @staticmethod
    def prometheus(rows: list[dict], totals: list) -> str:
        """The text format (https://prometheus.io/docs/instrumenting/exposition_formats/) of
        what `status` shows: `rows` are its session rows, `totals` what sink_totals gives."""
        out: list[str] = []

        def family(name: str, kind: str, text: str, samples) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                shown = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")

        family("confabd_build_info", "gauge", "The master's version.", [({"version": __version__}, 1)])
        states = Metrics.states(rows)
        family("confabd_sessions", "gauge", "Sessions by state.", [({"state": s}, n) for s, n in states.items()])
        family("confabd_provider_sessions", "gauge", "Sessions by coding agent (provider).",
               [({"provider": p}, n) for p, n in Metrics.providers(rows).items()])

        def per_sink(name, kind, text, value):
            family(name, kind, text, [({"sink": sink}, value(t, lag, down)) for sink, t, lag, down in totals])

        per_sink("confabd_lines_delivered_total", "counter", "Lines the sink confirmed.", lambda t, *_: t.lines)
        per_sink("confabd_bytes_delivered_total", "counter", "Bytes of those lines, each with its newline.",
                 lambda t, *_: t.bytes)
        per_sink("confabd_chunks_total", "counter", "Chunks the sink confirmed.", lambda t, *_: t.chunks)
        family("confabd_errors_total", "counter", "Failed sink requests, by kind.",
               [({"sink": sink, "kind": kind}, n) for sink, t, _, _ in totals for kind, n in sorted(t.errors.items())])
        per_sink("confabd_worker_restarts_total", "counter", "Workers started again for a session.",
                 lambda t, *_: t.restarts)
        per_sink("confabd_lines_behind", "gauge", "Complete lines in the files that the sink has not confirmed.",
                 lambda t, lag, _: lag)
        per_sink("confabd_sink_up", "gauge", "1 while the sink answers, 0 while it cannot be reached.",
                 lambda t, lag, down: int(down is None))
        family("confabd_last_delivery_timestamp_seconds", "gauge", "When the sink last confirmed lines (Unix time).",
               [({"sink": sink}, round(t.last_delivery, 3)) for sink, t, _, _ in totals if t.last_delivery])
        return "\n".join(out) + "\n"


def escape(value) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
