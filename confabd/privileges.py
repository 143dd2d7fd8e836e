"""System mode: doing things *as a user* from a master that runs as root.

The system master never opens a user's file as root. Whatever touches a
user's files runs in a process that first became that user for good:
- a session worker (`become` in `confabd.worker.worker_main`, before the
  worker opens anything);
- a short-lived helper (`fork_helper`): the master forks, the child sheds
  the master's fds, becomes the user, does one small job (may this user read
  that transcript? which States are in their sync dir? what is in this one?),
  sends the answer back over a pipe (msgpack) and exits. The master never
  waits for it: confabd.helpers watches its pipe from the loop, with a
  deadline. (`run_as` is the same, synchronous, for tools and tests.)

Becoming a user is one way: initgroups + setresgid + setresuid (real,
effective and saved ids all the user's; root's capabilities are gone with
them), PR_SET_NO_NEW_PRIVS (no setuid binary can give root back), umask 077,
HOME/USER/LOGNAME of the user, the daemon's CONFAB* and XDG_* variables
removed (a user's worker must use that user's ~/.confab/config.json, never
the daemon's key). `drop_to` then checks that setuid(0) fails.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import pwd
import select
import signal
import stat
import time
from typing import Any, Callable, Optional

import msgspec

from . import paths, providers, runs
from .errors import CorruptRecord
from .records import InboxRecord, State
from .store import SyncDir

PR_SET_NO_NEW_PRIVS = 38
HELPER_TIMEOUT_S = 5.0
MAX_HELPER_REPLY = 16 << 20
# Imported before a worker drops root: after that the interpreter's own files
# may not be readable by the user (e.g. a Python under /root), and a lazy import
# would fail in the middle of a sync.
WORKER_PRELOAD = ("confabd.worker", "confabd.redact", "confabd.sinks.http", "confabd.sinks.archive",
                  "encodings.idna", "sqlite3", "confabd.providers.claude_code", "confabd.providers.codex",
                  "confabd.providers.cursor", "confabd.providers.opencode")


class User(msgspec.Struct, frozen=True):
    uid: int
    gid: int
    name: str
    home: str

    @property
    def sync_dir(self) -> str:
        """A user's sync dir in system mode: always ~/.confab/sync of that user."""
        return paths.default_sync_dir(self.home)


def lookup_user(uid: int) -> Optional[User]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    return User(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir or "/")


class PrivilegeError(Exception):
    pass


def drop_to(user: User) -> None:
    """Become `user` for the rest of this process's life. Only ever call it in a child."""
    if os.geteuid() == 0:
        os.initgroups(user.name, user.gid)
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        if user.uid != 0:
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:
                raise PrivilegeError(f"dropped to uid {user.uid} but setuid(0) still works")
        _no_new_privs()
    elif os.geteuid() != user.uid:
        raise PrivilegeError(f"cannot become {user.name} (uid {user.uid}) without root")
    os.umask(0o077)
    for name in list(os.environ):
        if name.startswith(("CONFAB", "XDG_")):
            del os.environ[name]
    os.environ.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    try:
        os.chdir(user.home)
    except OSError:
        os.chdir("/")


def become(user: Optional[User]) -> None:
    """`drop_to(user)`; None: stay who we are (the master's own user runs the worker)."""
    if user is not None:
        drop_to(user)


def reset_child_signals() -> None:
    """First thing in a child forked from the master: none of its signal setup survives."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


def _no_new_privs() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: setresuid alone already keeps root out of reach


def preload_worker_modules() -> None:
    for name in WORKER_PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


# ---------------------------------------------------------------------------
# Short-lived helpers: fork, become the user, answer, exit.


def run_as(user: User, fn: Callable[..., Any], *args, result_type: Any = Any,
           timeout: float = HELPER_TIMEOUT_S):
    """`fn(*args)` in a child that became `user`; its return value (msgpack), or raise.

    Synchronous: for tools and tests. The master never waits like this; it runs
    the same helpers through confabd.helpers, from its loop.
    An exception in `fn` comes back as PrivilegeError with its message. A child
    that does not answer within `timeout` is killed.
    """
    pid, r = fork_helper(user, fn, *args)
    try:
        data = _read_until_eof(r, time.monotonic() + timeout)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        raise PrivilegeError(f"a helper running as {user.name} did not answer within {timeout:.0f} s") from None
    finally:
        os.close(r)
        _reap(pid)
    return decode_helper_reply(user, data, result_type)


def fork_helper(user: User, fn: Callable[..., Any], *args) -> tuple[int, int]:
    """Fork a child that becomes `user`, runs `fn(*args)`, writes the outcome and exits.

    Returns (pid, the read end of its pipe); the answer is complete at EOF
    (decode_helper_reply). The child keeps no fd of the master but its pipe.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(r)
            reset_child_signals()
            os.closerange(3, w)  # the master's sockets and pipes are none of a helper's business
            os.closerange(w + 1, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
            try:
                drop_to(user)
                outcome = (True, "", fn(*args))
            except Exception as exc:  # noqa: BLE001 - sent to the master as a message
                outcome = (False, str(exc) or type(exc).__name__, None)
            view = memoryview(msgspec.msgpack.encode(outcome))
            while view:
                view = view[os.write(w, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def decode_helper_reply(user: User, data: bytes, result_type: Any = Any):
    """A helper's whole answer: its value, or PrivilegeError with why there is none."""
    if not data:
        raise PrivilegeError(f"a helper running as {user.name} died without answering")
    try:
        ok, message, value = msgspec.msgpack.decode(data, type=tuple[bool, str, Optional[result_type]])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PrivilegeError(f"unreadable answer from a helper running as {user.name}: {exc}") from None
    if not ok:
        raise PrivilegeError(message)
    return value


def _read_until_eof(fd: int, deadline: float) -> bytes:
    chunks, size = [], 0
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_HELPER_REPLY:
            raise TimeoutError
        chunks.append(chunk)


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


# -- the jobs helpers do (these run as the user) ---------------------------------


def transcript_problem(path: str) -> str:
    """Why the (current) user may not sync `path`; "" when they may.

    An existing transcript must be a regular file they can open for reading. One
    that does not exist yet must be creatable by them: its nearest existing
    ancestor is a directory they can write and search.
    """
    if not os.path.isabs(path):
        return f"transcript path {path!r} is not absolute"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"you cannot read the transcript {path} ({exc.strerror})"
    else:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return f"the transcript {path} is not a regular file"
            return ""
        finally:
            os.close(fd)
    parent = os.path.dirname(path)
    while True:
        try:
            st = os.stat(parent)
            break
        except FileNotFoundError:
            parent = os.path.dirname(parent)
        except OSError as exc:
            return f"you cannot reach the transcript {path} ({exc.strerror})"
    if not stat.S_ISDIR(st.st_mode) or not os.access(parent, os.W_OK | os.X_OK):
        return f"you cannot create the transcript {path} ({os.strerror(errno.EACCES)} in {parent})"
    return ""


MAX_STATE_BYTES = 8 << 20  # a State of a session with tens of thousands of agent files is ~1 MB


def session_ids(sync_dir: str) -> list[str]:
    """The IDs of the State files in `sync_dir` (names only: each is read on its own)."""
    return list(SyncDir(sync_dir).external_ids())


def adoption_record(sync_dir: str, external_id: str) -> Optional[tuple[State, bool]]:
    """(State, its inbox holds a session_end) of one session, None when it has no State.

    Only a regular file of at most MAX_STATE_BYTES that names this session is a
    State: a FIFO (opened without blocking), a device, a huge file or one whose
    `external_id` is another's is an error naming the file, and nothing is touched.
    """
    files = SyncDir(sync_dir)
    path = files.state_path(external_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptRecord(path, exc.strerror or str(exc)) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptRecord(path, "not a regular file")
        if st.st_size > MAX_STATE_BYTES:
            raise CorruptRecord(path, f"{st.st_size} bytes, over the {MAX_STATE_BYTES}-byte limit")
        data = f.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise CorruptRecord(path, f"over the {MAX_STATE_BYTES}-byte limit")
    try:
        state = msgspec.json.decode(data, type=State)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecord(path, str(exc)) from None
    if state.external_id != external_id:
        raise CorruptRecord(path, f"it names session {state.external_id!r}, not {external_id!r}")
    try:
        providers.check_name(state.provider)
    except providers.UnknownProvider as exc:
        raise CorruptRecord(path, str(exc)) from None
    # Ended: its own run's SessionEnd is in the inbox, or a later run is registered (runs.py).
    mine, later = runs.split(files.read_inbox(external_id),
                             runs.RunIdentity(state.run_id, state.parent_pid, state.parent_create_time))
    ended = bool(later) or any(r.type == "session_end" for r in mine)
    return state, ended


def append_inbox(sync_dir: str, external_id: str, record: InboxRecord) -> None:
    SyncDir(sync_dir).append_inbox(external_id, record)


def delete_session(sync_dir: str, external_id: str) -> None:
    SyncDir(sync_dir).delete_session(external_id)


def _list_states_with_end(sync_dir: str) -> list[tuple[State, bool]]:
    return SyncDir(sync_dir).list_states_with_end()


def _load_state(sync_dir: str, external_id: str) -> Optional[State]:
    return SyncDir(sync_dir).load_state(external_id)


def _delete_session(sync_dir: str, external_id: str) -> None:
    SyncDir(sync_dir).delete_session(external_id)


class UserSyncDir:
    """A user's sync dir seen from the root master: every access is a helper running as the user.

    The subset of `confabd.store.SyncDir` the master uses, with the same
    meaning; an error (a corrupt State, say) comes back as PrivilegeError
    carrying its message, and nothing is touched.
    """

    def __init__(self, user: User):
        self.user = user
        self.path = user.sync_dir

    def list_states_with_end(self) -> list[tuple[State, bool]]:
        return run_as(self.user, _list_states_with_end, self.path, result_type=list[tuple[State, bool]])

    def load_state(self, external_id: str) -> Optional[State]:
        return run_as(self.user, _load_state, self.path, external_id, result_type=State)

    def delete_session(self, external_id: str) -> None:
        run_as(self.user, _delete_session, self.path, external_id)

    def check_transcript(self, path: str) -> str:
        return run_as(self.user, transcript_problem, path, result_type=str)
