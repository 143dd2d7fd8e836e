"""Whose master this is: the one place where user mode and system mode differ.

A master serves one tenancy, chosen once at start (`kind`):
- `UserTenancy`: the master runs as a user, for that user. Every caller is
  that user (the socket is 0600 in a 0700 dir), every session is theirs, the
  sync dir is the master's own, workers run as the master.
- `SystemTenancy`: one root master for the host. Requests act for the uid of
  the socket's peer (SO_PEERCRED, read on accept). A user sees, finishes and
  registers only their own sessions; root (uid 0) sees and finishes all and is
  the only one who may shut the master down. Each user (not root) has a token
  bucket of `max_requests_per_second` requests (burst: 2 s worth, at least
  20), at most `max_sessions_per_user` live sessions and
  MAX_CONNECTIONS_PER_USER open connections. Their files are touched only by
  processes that became them (privileges.py): their sync dir through
  helpers, their sessions by workers running as them with their own
  ~/.confab/config.json.

Both implement the same methods with the same meaning (a corrupt State, say,
is an error in both and its files are kept), so the rest of the master never
asks which mode it is in. Owners are uids in system mode; in user mode every
session has the one owner USER_OWNER.

`Registry` (system mode): a root-owned directory with one empty file per uid
that has (or had) sessions, so a restarted master knows whose sync dirs to
list (as that user) without reading anybody's home as root. It lives in
/var/lib/confabd/users by default: it must survive a master crash and a
reboot alike, since a State left in a home dir by a crash or a power cut
still has lines to upload (its parent is gone: the next master finishes it).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from typing import Callable, NamedTuple, Optional, Protocol

import msgspec
import psutil

from . import fileio, go_compat, paths
from .config import Settings
from . import privileges
from .privileges import PrivilegeError, User, lookup_user
from .records import InboxRecord, NextRun, State
from .runs import NEXT_RUN
from .store import SyncDir, utc_now

log = logging.getLogger("confabd.tenancy")

ROOT_UID = 0
USER_OWNER = -1  # user mode: the owner of every session (the master's own user)
MAX_CONNECTIONS_PER_USER = 32
MIN_BURST = 20

Peer = tuple  # (pid, uid, gid) from SO_PEERCRED
# session_record's answer: ((State, its inbox holds a session_end) or None when there is no State, error)
RecordThen = Callable[[Optional[tuple[State, bool]], str], None]


def next_run_record(run: NextRun) -> InboxRecord:
    return InboxRecord(type=NEXT_RUN, timestamp=utc_now(), next_run=run)


class Refusal(NamedTuple):
    message: str
    retry_after: float


class WorkerHome(NamedTuple):
    """Where a session's worker lives: whose home, which sync dir, which settings, as whom."""

    home: str
    sync_dir: str
    settings: Settings
    run_as: Optional[User]


class DefaultPaths(NamedTuple):
    settings: str
    socket: str
    pidfile: str  # "": beside the socket


class Tenancy(Protocol):
    """The interface both tenancies implement; the master knows nothing else of its mode."""

    mode: str  # "user" | "system": for `status` and the logs
    dir_mode: int  # of the socket's and the pidfile's dir, when the master creates them
    socket_mode: Optional[int]  # None: the socket stays 0600
    log_file_mode: Optional[int]  # None: the log file keeps its mode

    # starting (master_cli)
    @staticmethod
    def default_paths(home: str, env) -> DefaultPaths: ...
    @staticmethod
    def startup_problem() -> str: ...  # why this master cannot run here; "" when it can
    def describe(self) -> str: ...  # where the sessions' files are, for the log
    def configure(self, settings: Settings) -> None: ...  # SIGHUP

    # callers
    def owner(self, peer: Peer) -> int: ...  # whom a connection's requests act for
    def accepts(self, uid: int, open_connections: int) -> bool: ...
    def throttle(self, owner: int) -> Optional[Refusal]: ...
    def sees_all(self, owner: int) -> bool: ...  # finds anybody's session by its ID
    def may_see(self, viewer: int, owner: int) -> bool: ...
    def shutdown_refusal(self, owner: int) -> str: ...  # "" when they may shut the master down
    def reload_refusal(self, owner: int) -> str: ...  # "" when they may have the settings re-read
    def hook_pid(self, peer: Peer, claimed: int) -> int: ...  # whose ancestors to search for Claude Code
    def owns_process(self, owner: int, pid: int) -> bool: ...
    def session_cap_refusal(self, owner: int, live: int) -> str: ...  # "" or "too many sessions ..."
    def describe_owner(self, owner: int) -> dict: ...  # extra fields of a status row

    # files and workers. What touches an owner's files answers through `then`, at once in user
    # mode (the master's own files), from a helper in system mode (confabd.helpers): the loop
    # never waits for a user's process. PrivilegeError (raised at once): no helper could run.
    def use_helpers(self, helpers) -> None: ...  # the master's confabd.helpers.Helpers
    def check_transcript(self, owner: int, transcript: str, then: Callable[[str], None]) -> None: ...
    def session_record(self, owner: int, external_id: str, then: RecordThen, counted: bool = True) -> None: ...
    def delete_session(self, owner: int, external_id: str,
                       then: Optional[Callable[[str], None]] = None) -> None: ...  # then(error)
    def record_next_run(self, owner: int, external_id: str, run: NextRun) -> None: ...  # runs.py
    def owners_to_adopt(self) -> list[int]: ...  # whose sync dirs may hold States (at start)
    def owners_waiting(self) -> list[int]: ...  # who left a note while no master ran (the spool)
    def session_ids(self, owner: int, then: Callable[[list[str], str], None], counted: bool = False) -> None: ...
    def worker_home(self, owner: int, settings: Settings) -> WorkerHome: ...  # PrivilegeError: no such user
    def record_unstarted(self, session) -> None: ...  # a State for a worker that could not be forked
    def remember(self, owner: int) -> None: ...  # this owner has sessions (for the next master)
    def forget(self, owner: int) -> None: ...  # ...and now has none left on disk


def kind(system: bool) -> type:
    """The tenancy class for `confabd` (False) or `confabd --system` (True)."""
    return SystemTenancy if system else UserTenancy


def by_mode(mode: str) -> type:
    return {UserTenancy.mode: UserTenancy, SystemTenancy.mode: SystemTenancy}[mode]


# ---------------------------------------------------------------------------


class UserTenancy:
    """A user's own master: one owner, no limits, its own sync dir."""

    mode = "user"
    dir_mode = 0o700  # of the socket's and the pidfile's dir, when the master creates them
    socket_mode: Optional[int] = None  # the socket stays 0600 as bound
    log_file_mode: Optional[int] = 0o600

    def __init__(self, settings: Settings, *, sync_dir: str, home: str, registry_dir: str = ""):
        self.files = SyncDir(sync_dir)
        self.home = home

    # -- starting -------------------------------------------------------------

    @staticmethod
    def default_paths(home: str, env) -> DefaultPaths:
        return DefaultPaths(paths.user_settings_path(home), paths.user_socket_path(home, env), "")

    @staticmethod
    def startup_problem() -> str:
        return ""

    def describe(self) -> str:
        return f"sync dir {self.files.path}"

    def configure(self, settings: Settings) -> None:
        pass

    # -- callers: who they are, what they may do --------------------------------

    def owner(self, peer: Peer) -> int:
        return USER_OWNER

    def accepts(self, uid: int, open_connections: int) -> bool:
        return True

    def throttle(self, owner: int) -> Optional[Refusal]:
        return None

    def sees_all(self, owner: int) -> bool:
        return False  # there is nobody else's session to see

    def may_see(self, viewer: int, owner: int) -> bool:
        return True

    def shutdown_refusal(self, owner: int) -> str:
        return ""

    def reload_refusal(self, owner: int) -> str:
        return ""

    def hook_pid(self, peer: Peer, claimed: int) -> int:
        return claimed

    def owns_process(self, owner: int, pid: int) -> bool:
        return True

    def session_cap_refusal(self, owner: int, live: int) -> str:
        return ""

    def describe_owner(self, owner: int) -> dict:
        return {}

    # -- files and workers ---------------------------------------------------------

    def use_helpers(self, helpers) -> None:
        pass  # the master is the user: it reads its own files (without blocking on a FIFO)

    def check_transcript(self, owner: int, transcript: str, then: Callable[[str], None]) -> None:
        then("")  # whatever the master's user may read, the worker (the same user) may

    def session_record(self, owner: int, external_id: str, then: RecordThen, counted: bool = True) -> None:
        try:
            record = privileges.adoption_record(self.files.path, external_id)
        except Exception as exc:  # noqa: BLE001 - a corrupt or planted file: its files are kept
            then(None, str(exc))
            return
        then(record, "")

    def delete_session(self, owner: int, external_id: str,
                       then: Optional[Callable[[str], None]] = None) -> None:
        error = ""
        try:
            self.files.delete_session(external_id)
        except OSError as exc:
            error = str(exc)
        if then is not None:
            then(error)

    def record_next_run(self, owner: int, external_id: str, run: NextRun) -> None:
        """A registration while finishing, on disk at once (runs.py)."""
        try:
            self.files.append_inbox(external_id, next_run_record(run))
        except OSError as exc:
            log.error("session %s: cannot record its next run (%s); it is remembered until the master "
                      "exits", external_id, exc.strerror or exc)

    def owners_to_adopt(self) -> list[int]:
        return [USER_OWNER]

    def owners_waiting(self) -> list[int]:
        return []  # the hook's fallback State is in this master's own sync dir, read at start

    def session_ids(self, owner: int, then: Callable[[list[str], str], None], counted: bool = False) -> None:
        then(privileges.session_ids(self.files.path), "")

    def worker_home(self, owner: int, settings: Settings) -> WorkerHome:
        return WorkerHome(self.home, self.files.path, settings, None)

    def record_unstarted(self, session) -> None:
        """A State for a session whose worker could not even start.

        Normally the worker writes it first thing, and it does so even if the
        master dies right after the fork; only a failed fork leaves no record
        for the next master should this one die during the restart backoff.
        """
        state = State(external_id=session.external_id, transcript_path=session.transcript_path,
                      cwd=session.cwd, pid=go_compat.state_pid(session.parent_pid, session.parent_create_time, False, os.getpid()),
                      parent_pid=session.parent_pid,
                      inbox_path=self.files.inbox_path(session.external_id), started_at=utc_now(),
                      parent_create_time=session.parent_create_time, provider=session.provider,
                      model=session.model)
        try:
            if self.files.load_state(session.external_id) is None:
                self.files.save_state(state)
        except Exception as exc:  # corrupt: replace it; unwritable: the worker reports it
            try:
                self.files.save_state(state)
            except OSError:
                log.error("session %s: cannot write its State file: %s", session.external_id, exc)

    def remember(self, owner: int) -> None:
        pass

    def forget(self, owner: int) -> None:
        pass


# ---------------------------------------------------------------------------


class SystemTenancy:
    """One root master for every user of the host (see the module docstring)."""

    mode = "system"
    dir_mode = 0o755  # the socket inside must be reachable by everybody
    socket_mode: Optional[int] = 0o666  # anyone may connect; SO_PEERCRED says who they are
    log_file_mode: Optional[int] = None

    def __init__(self, settings: Settings, *, sync_dir: str = "", home: str = "", registry_dir: str = ""):
        self.policy = Policy(settings.max_sessions_per_user, settings.max_requests_per_second)
        self.registry = Registry(registry_dir or paths.SYSTEM_REGISTRY_DIR)
        self.spool = Spool(settings.spool_dir or paths.SYSTEM_SPOOL_DIR)
        self.helpers = None  # confabd.helpers.Helpers, given by the master (use_helpers)

    # -- starting -------------------------------------------------------------

    @staticmethod
    def default_paths(home: str, env) -> DefaultPaths:
        return DefaultPaths(paths.SYSTEM_SETTINGS, paths.SYSTEM_SOCKET, paths.SYSTEM_PIDFILE)

    @staticmethod
    def startup_problem() -> str:
        return "" if os.geteuid() == ROOT_UID else "--system must run as root"

    def describe(self) -> str:
        return f"each user's sync dir, users listed in {self.registry.path}"

    def configure(self, settings: Settings) -> None:
        self.policy.configure(settings.max_sessions_per_user, settings.max_requests_per_second)

    # -- callers: who they are, what they may do --------------------------------

    def owner(self, peer: Peer) -> int:
        return peer[1]

    def accepts(self, uid: int, open_connections: int) -> bool:
        """One user's idle connections must not use up the master's fds."""
        return uid == ROOT_UID or open_connections < MAX_CONNECTIONS_PER_USER

    def throttle(self, owner: int) -> Optional[Refusal]:
        retry = self.policy.throttle(owner)
        if not retry:
            return None
        return Refusal(f"too many requests from uid {owner} (limit {self.policy.rate:g} per second); "
                       f"retry in {retry:.2f} s", retry)

    def sees_all(self, owner: int) -> bool:
        return owner == ROOT_UID

    def may_see(self, viewer: int, owner: int) -> bool:
        return viewer == ROOT_UID or viewer == owner

    def shutdown_refusal(self, owner: int) -> str:
        return "" if owner == ROOT_UID else "only root may shut down the system-mode master"

    def reload_refusal(self, owner: int) -> str:
        return "" if owner == ROOT_UID else "only root may reload the system-mode master's settings"

    def hook_pid(self, peer: Peer, claimed: int) -> int:
        return peer[0]  # the kernel's word, not the client's

    def owns_process(self, owner: int, pid: int) -> bool:
        """Is `pid` a process of `owner` (root: of anybody)?"""
        if owner == ROOT_UID:
            return True
        try:
            return psutil.Process(pid).uids().real == owner
        except psutil.Error:
            return False

    def session_cap_refusal(self, owner: int, live: int) -> str:
        """Every path that makes a session live asks this: register, finish of an unknown ID, adoption."""
        if self.policy.over_session_cap(owner, live):
            return (f"too many sessions: uid {owner} already has {live} (max_sessions_per_user is "
                    f"{self.policy.max_sessions}); not syncing this one, its State (if any) is kept")
        return ""

    def describe_owner(self, owner: int) -> dict:
        return {"uid": owner}

    # -- files and workers ---------------------------------------------------------

    def user(self, owner: int) -> User:
        user = lookup_user(owner)
        if user is None:
            raise PrivilegeError(f"uid {owner} has no passwd entry")
        return user

    def use_helpers(self, helpers) -> None:
        self.helpers = helpers

    def check_transcript(self, owner: int, transcript: str, then: Callable[[str], None]) -> None:
        """As the user, in a helper: root must not look at the path for them."""
        def done(problem, error):
            then(f"cannot check the transcript path as uid {owner}: {error}" if error else problem)
        self.helpers.run(self.user(owner), privileges.transcript_problem, transcript, result_type=str, done=done)

    def session_record(self, owner: int, external_id: str, then: RecordThen, counted: bool = True) -> None:
        user = self.user(owner)
        self.helpers.run(user, privileges.adoption_record, user.sync_dir, external_id,
                         result_type=tuple[State, bool], done=then, counted=counted)

    def delete_session(self, owner: int, external_id: str,
                       then: Optional[Callable[[str], None]] = None) -> None:
        user = self.user(owner)

        def done(_value, error):
            if error:
                log.warning("uid %d: cannot remove the files of session %s: %s", owner, external_id, error)
            if then is not None:
                then(error)
        self.helpers.run(user, privileges.delete_session, user.sync_dir, external_id, done=done, counted=False)

    def record_next_run(self, owner: int, external_id: str, run: NextRun) -> None:
        """A registration while finishing, on disk at once (runs.py), written as the user."""
        user = self.user(owner)

        def done(_value, error):
            if error:
                log.error("session %s: cannot record its next run (%s); it is remembered until the master "
                          "exits", external_id, error)
        self.helpers.run(user, privileges.append_inbox, user.sync_dir, external_id, next_run_record(run),
                         done=done, counted=False)

    def owners_to_adopt(self) -> list[int]:
        self.spool.ensure()
        return sorted(set(self.registry.uids()) | set(self.owners_waiting()))

    def owners_waiting(self) -> list[int]:
        """Users who left a note while no master answered; listed again (remembered) from now on."""
        uids = [uid for uid in self.spool.take() if lookup_user(uid) is not None]
        for uid in uids:
            self.registry.add(uid)
        return uids

    def session_ids(self, owner: int, then: Callable[[list[str], str], None], counted: bool = False) -> None:
        """The IDs of the States in the owner's sync dir, listed by a helper running as them
        (`counted`: against their helpers in progress, for one a request of theirs asks for)."""
        if lookup_user(owner) is None:
            self.registry.remove(owner)
            then([], f"uid {owner} has no passwd entry")
            return
        user = self.user(owner)
        self.helpers.run(user, privileges.session_ids, user.sync_dir, result_type=list[str],
                         done=lambda ids, error: then(ids or [], error), counted=counted)

    def worker_home(self, owner: int, settings: Settings) -> WorkerHome:
        """The worker becomes the owner and uses the owner's own files and settings."""
        user = self.user(owner)
        own = msgspec.structs.replace(settings, state_dir="", archive_path="", socket="")
        return WorkerHome(user.home, user.sync_dir, own, user)

    def record_unstarted(self, session) -> None:
        """Nothing: only a process running as the user may write their State, and the
        fork that would start it has just failed. The session's worker writes it."""

    def remember(self, owner: int) -> None:
        """For re-adoption after a restart; the worker writes the State, as the user."""
        self.registry.add(owner)

    def forget(self, owner: int) -> None:
        """Nothing of theirs is left to adopt: not listed again until they register."""
        self.registry.remove(owner)


# ---------------------------------------------------------------------------


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> float:
        """0.0 when a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else 1.0


class Policy:
    """System mode's limits per uid: requests per second and live sessions; root has none."""

    def __init__(self, max_sessions_per_user: int, max_requests_per_second: float):
        self.buckets: dict[int, TokenBucket] = {}
        self.configure(max_sessions_per_user, max_requests_per_second)

    def configure(self, max_sessions_per_user: int, max_requests_per_second: float) -> None:
        self.max_sessions = max_sessions_per_user
        self.rate = max_requests_per_second
        self.buckets.clear()

    def throttle(self, uid: int) -> float:
        """0.0 if this request of `uid` may be served now, else when to retry (seconds)."""
        if uid == ROOT_UID or self.rate <= 0:
            return 0.0
        bucket = self.buckets.get(uid)
        if bucket is None:
            bucket = self.buckets[uid] = TokenBucket(self.rate, max(MIN_BURST, 2 * self.rate))
        return bucket.take()

    def over_session_cap(self, uid: int, live: int) -> bool:
        return uid != ROOT_UID and 0 < self.max_sessions <= live


class Spool:
    """A sticky world-writable dir (1733) where a user's hook leaves an empty file when no master
    answers: "I have sessions on disk". The owner of the file (st_uid, which only the kernel
    sets) says who; its name is never read, and the file is never opened, only lstat'ed and
    removed. A user can make the master list their own sync dir, nobody else's, and cannot
    see or remove other users' notes (1733: no listing, sticky)."""

    MAX_NOTES_PER_TAKE = 10_000  # a user who floods it costs one bounded scan per turn

    def __init__(self, path: str):
        self.path = path

    def ensure(self) -> None:
        """Create it (1733, ours); an existing one must be ours and not writable by others without the sticky bit."""
        try:
            fileio.make_dirs(self.path, 0o755)
            st = os.lstat(self.path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise PermissionError(f"{self.path} must be a directory owned by uid {os.geteuid()}")
            if stat.S_IMODE(st.st_mode) != 0o1733:
                os.chmod(self.path, 0o1733)
        except OSError as exc:
            log.error("spool dir %s is unusable (users' sessions left while the master was down are "
                      "adopted once they register again): %s", self.path, exc)

    def take(self) -> list[int]:
        """The uids of the notes there now; the notes are removed."""
        try:
            st = os.lstat(self.path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or not st.st_mode & stat.S_ISVTX:
                return []
            entries = os.scandir(self.path)
        except OSError:
            return []
        uids: set[int] = set()
        with entries:
            for n, entry in enumerate(entries):
                if n >= self.MAX_NOTES_PER_TAKE:
                    break
                try:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode):
                        uids.add(info.st_uid)
                    os.unlink(entry.path)  # a link is removed, never followed
                except OSError:
                    continue
        return sorted(uids)


class Registry:
    """`<dir>/<uid>`: empty root-owned files naming the users who have sessions."""

    def __init__(self, path: str):
        self.path = path

    def ensure(self) -> None:
        fileio.make_dirs(self.path, 0o700)
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PermissionError(f"{self.path} must be a directory owned by uid {os.geteuid()} "
                                  "and writable by it alone")

    def add(self, uid: int) -> None:
        entry = os.path.join(self.path, str(uid))
        if os.path.exists(entry):
            return
        try:
            self.ensure()
            fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.fsync(fd)
            os.close(fd)
        except OSError as exc:
            log.error("cannot record uid %d in %s (its sessions will not be re-adopted "
                      "after a restart): %s", uid, self.path, exc)

    def remove(self, uid: int) -> None:
        try:
            os.unlink(os.path.join(self.path, str(uid)))
        except FileNotFoundError:
            pass

    def uids(self) -> list[int]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(int(name) for name in names if name.isdigit())
