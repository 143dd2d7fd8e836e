"""The contract between the master and a session worker.

The master forks one process per session (confabd.forking) with
`confabd.worker.worker_main(spec, conn)` as its target, where `conn` is the worker's end of a
`multiprocessing.Pipe()`; `run_worker(spec, conn)` is the same without the
post-fork clean-up (what the tests start).

Master -> worker (bytes of `encode(...)` via conn.send_bytes):
    Finish()   final sync (bounded by the shutdown timeout), the `session_end`
               event if the inbox has one, then delete State and inbox, exit 0.
    Reload(settings)  the master's settings after a SIGHUP (as this worker's
               tenancy gives them): used from the next cycle, with the sink
               rebuilt and ~/.confab/config.json read again.
    Retry()    `confabctl retry`: the sink rebuilt and the backoff dropped, at once.

Worker -> master:
    Report     sent on every phase change and after each sync cycle (and while
               backing off, when the files grew), so `confabctl status` and
               the metrics can answer without touching user files.
    Heartbeat  sent while the worker waits, so that the master hears from it at
               least every `worker_timeout_s / 3` (`heartbeat_interval`); a
               worker silent for `worker_timeout_s` is hung: the master kills
               it and restarts it like a crashed one.

The master never blocks on a worker (confabd.worker_channel): its messages
wait in a bounded outbox, and a worker that does not read them is hung too.

Exit codes: EXIT_DONE (0) the session is finished and its files removed;
EXIT_MASTER_GONE the pipe hit EOF (the master died; State saved, session
still live: a new master re-adopts it; also after SIGTERM);
EXIT_UNFINISHED the session could not be finished: the final sync could not
complete within the shutdown timeout, or the transcript stayed locked by
another process or unreadable (State kept with `finishing` and the reason in
`last_error`; the master should retry later, not count it as a crash);
EXIT_BLOCKED likewise, but because a file is blocked (an oversized line under
`oversized_lines = "block"`, a refused chunk, the chunk cap): a retry on a
timer would fail the same way, so the master retries only when asked;
anything else is a crash and the master restarts the worker with backoff.
The worker never exits because the backend is down.
"""

from __future__ import annotations

import enum
from typing import Any, Optional, Union

import msgspec

from .config import Settings
from .delivery import Tally
from .privileges import User

class Phase(str, enum.Enum):
    """Where a session is in its life: `status` shows it, State records the worker's."""

    WAITING = "waiting"  # for the transcript to appear
    CONNECTING = "connecting"  # building the sink, first sync not done yet
    SYNCING = "syncing"
    FINISHING = "finishing"  # final sync, session_end, cleanup
    DONE = "done"  # the worker's last report
    BACKOFF = "backoff"  # the master's: the worker is gone, a restart is due
    FAILED = "failed"  # the master's: crash loop, no more restarts

    def __str__(self) -> str:
        return self.value


# Why a session finishes: the master's reasons travel to the worker (WorkerSpec.finish_reason,
# Finish.reason), which writes them into a synthetic session_end's `confabd_reason`.
STOP_REQUESTED = "stop requested"  # confabctl stop, or a Finish request without a reason
SESSION_END_IN_INBOX = "SessionEnd recorded in the inbox"  # the hook could not reach the master
SESSION_DELETED = "session deleted from backend"
FINISH_RESUMED = "finishing was already under way"  # State says finishing, nobody said why
REGISTERED_AGAIN = "registered again (a later run of the session is waiting)"  # runs.py


def parent_exited(pid: int, agent: str = "Claude Code") -> str:
    return f"{agent} (pid {pid}) exited"


def parent_gone(pid: int = 0, agent: str = "Claude Code") -> str:
    """Found gone when a master adopted the session (it exited while no master watched)."""
    return f"{agent} (pid {pid}) is gone" if pid else f"{agent} is gone"


EXIT_DONE = 0
EXIT_MASTER_GONE = 75  # EX_TEMPFAIL: nothing wrong with the session itself
EXIT_UNFINISHED = 76  # finishing could not complete (backend down, bad key): State kept, retry later
EXIT_BLOCKED = 77  # a file cannot be delivered past a line (State.blocked): State kept, no retry by itself


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a worker needs; picklable and small."""

    external_id: str
    transcript_path: str
    sync_dir: str
    home: str
    settings: Settings
    cwd: str = ""
    provider: str = "claude-code"  # the agent (confabd.providers): what the engine asks about its files
    model: str = ""  # its hook's model (Cursor): stamped on every transcript chunk
    parent_pid: int = 0
    parent_create_time: float = 0.0
    restarts: int = 0
    finish_reason: str = ""  # not "": start straight in finishing mode, for this reason
    end_hook_input: Optional[dict[str, Any]] = None  # see Finish.hook_input
    config_dir: str = ""  # the session's binding (bindings.py); "": the default backend
    # The user the worker becomes before it opens any file (system mode); None: stay as forked.
    run_as: Optional[User] = None
    run_id: str = ""  # which run of the session (runs.py): "" the first


class Finish(msgspec.Struct, tag="finish", frozen=True):
    reason: str = ""
    hook_input: Optional[dict[str, Any]] = None  # SessionEnd input the hook could not write to the inbox


class Reload(msgspec.Struct, tag="reload", frozen=True):
    settings: Settings


class Retry(msgspec.Struct, tag="retry", frozen=True):
    """`confabctl retry`: now, without waiting out the backoff; the sink is rebuilt, so a
    blocked file is tried again from the backend's line count."""


class Report(msgspec.Struct, tag="report", frozen=True, kw_only=True):
    phase: Phase  # never BACKOFF or FAILED: those are the master's
    confab_session_id: str = ""
    files: dict[str, int] = {}  # file name -> last_synced_line
    last_sync_at: str = ""  # the last time the sink confirmed lines (not an idle pass)
    last_error: str = ""
    sink: str = ""  # where the lines go: the backend URL or archive:<path> (delivery.sink_target)
    complete: dict[str, int] = {}  # file name -> complete lines in the file (backlog.py)
    tally: Tally = msgspec.field(default_factory=Tally)  # this worker's counts since it started


class Heartbeat(msgspec.Struct, tag="heartbeat", frozen=True):
    """Still here (nothing else to say): see `heartbeat_interval`."""


def heartbeat_interval(settings: Settings) -> float:
    """How often a worker must be heard from, in seconds; 0: never (no hung-worker detection)."""
    return settings.worker_timeout_s / 3 if settings.worker_timeout_s > 0 else 0.0


MasterToWorker = Union[Finish, Reload, Retry]
WorkerToMaster = Union[Report, Heartbeat]

encode = msgspec.msgpack.encode
decode_command = msgspec.msgpack.Decoder(MasterToWorker).decode
decode_report = msgspec.msgpack.Decoder(WorkerToMaster).decode
