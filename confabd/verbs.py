"""`confabctl retry`, `forget`, `reload` and `handover`: the operator's verbs, client side.

Each is one control request (docs/CONTROL.md) to the first master that
answers, except `handover`, which talks to both: it stops the user's own
master (its live sessions are suspended, their State kept) and asks the
system master to adopt the user's States.

Session IDs may be shortened to a unique prefix, as `save` accepts them;
`retry` and `forget` look the prefix up among the sessions the master shows
the caller (and, for `forget`, the States in the caller's sync dir).
"""

from __future__ import annotations

import os
import sys
import time

from . import client
from .cli import ask
from .ctl import EXIT_FAIL, EXIT_NO_MASTER, EXIT_OK, EXIT_USAGE, err, sync_dir

HANDOVER_STOP_DEADLINE_S = 120.0  # the user master's shutdown: its final flushes (shutdown_timeout_ms)


class Ambiguous(ValueError):
    pass


def resolve_id(given: str, known: list[str]) -> str:
    """`given` itself, or the one id in `known` it is the start of; Ambiguous when several are."""
    if given in known:
        return given
    matches = sorted(i for i in known if i.startswith(given))
    if len(matches) > 1:
        raise Ambiguous(f"{given!r} is the start of {len(matches)} sessions ({', '.join(matches[:4])}"
                        f"{', ...' if len(matches) > 4 else ''}); give more of the id")
    return matches[0] if matches else given  # none: the master says "no session"


def master_sessions() -> list[dict]:
    reply, _path, _system = client.request_any({"type": "status"}, timeout=10.0)
    return (reply.get("sessions") or []) if reply.get("ok") else []


def local_state_ids() -> list[str]:
    """The sessions whose State is in the caller's sync dir (user mode's, or theirs in system mode)."""
    try:
        names = os.listdir(sync_dir())
    except OSError:
        return []
    return [n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")]


def cmd_retry(args) -> int:
    sessions = master_sessions()
    try:
        eid = resolve_id(args.external_id, [s["external_id"] for s in sessions])
    except Ambiguous as exc:
        err(f"retry: {exc}")
        return EXIT_USAGE
    reply = ask({"type": "retry", "external_id": eid})
    if reply is None:
        return EXIT_FAIL
    worker = f" (worker {reply['worker_pid']})" if reply.get("worker_pid") else ""
    print(f"session {eid}: was {reply.get('was')}, retrying now{worker}")
    return EXIT_OK


def cmd_forget(args) -> int:
    sessions = {s["external_id"]: s for s in master_sessions()}
    try:
        eid = resolve_id(args.external_id, sorted(set(sessions) | set(local_state_ids())))
    except Ambiguous as exc:
        err(f"forget: {exc}")
        return EXIT_USAGE
    session = sessions.get(eid)
    if not args.yes:
        if not (sys.stdin is not None and sys.stdin.isatty()):
            err("forget: no terminal to confirm on; run it with --yes to forget the session")
            return EXIT_USAGE
        sys.stdout.write(what_is_lost(eid, session) + "\nForget it? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("not forgotten")
            return EXIT_FAIL
    reply = ask({"type": "forget", "external_id": eid}, timeout=15.0)
    if reply is None:
        return EXIT_FAIL
    print(f"session {eid}: forgotten (was {reply.get('was')}); its State and inbox are removed, "
          "no session_end was sent")
    return EXIT_OK


def what_is_lost(eid: str, session) -> str:
    """What `forget` gives up, said before it is asked."""
    from .text import printable

    if session is None:
        head = f"session {eid}: only its State file is left (no master runs it)"
        delivered = "what it delivered so far stays on the backend"
    else:
        lines = sum(f.get("last_synced_line", 0) for f in (session.get("files") or {}).values())
        head = f"session {eid}: {session.get('state')}" + (
            f" ({printable(session['last_error'])})" if session.get("last_error") else "")
        delivered = f"the {lines} lines delivered so far stay on the backend"
    return (f"{head}\n"
            f"Forgetting it removes its State and inbox: confabd stops trying to deliver it, and no "
            f"session_end is sent ({delivered}, the session never shows as ended there). Lines not yet "
            f"delivered are not sent; the transcript itself is kept, so `confabctl save {eid}` can still "
            "upload them.")


def cmd_reload(args) -> int:
    reply, path, _system = client.request_any({"type": "reload"}, timeout=10.0)
    if not reply.get("ok"):
        err(f"reload: {reply.get('error')}")
        return EXIT_FAIL
    print(f"settings reloaded by the master on {path}; {reply.get('workers', 0)} running workers use them "
          "from their next cycle")
    return EXIT_OK


def cmd_handover(args) -> int:
    """Move this user's sessions from their own (user-mode) master to the system master."""
    system = client.system_socket_path()
    user = user_socket()
    try:
        client.request(system, {"type": "ping"}, timeout=5.0)
    except client.NoMaster:
        err(f"handover: no system master answers on {system}; nothing to hand the sessions over to "
            "(start it: systemctl start confabd)")
        return EXIT_NO_MASTER
    try:
        reply = client.request(user, {"type": "ping"}, timeout=5.0)
    except client.NoMaster:
        reply = None
    if reply is not None and reply.get("ok"):
        pid = int(reply.get("pid") or 0)
        print(f"stopping your own master (pid {pid}); its sessions' State is kept for the system master")
        stopped = client.request(user, {"type": "shutdown"}, timeout=10.0)
        if not stopped.get("ok"):
            err(f"handover: your master refused to stop: {stopped.get('error')}")
            return EXIT_FAIL
        if not wait_gone(pid, HANDOVER_STOP_DEADLINE_S):
            err(f"handover: your master (pid {pid}) did not stop within {HANDOVER_STOP_DEADLINE_S:.0f} s")
            return EXIT_FAIL
    reply = client.request(system, {"type": "adopt"}, timeout=30.0)
    if not reply.get("ok"):
        err(f"handover: the system master: {reply.get('error')}")
        return EXIT_FAIL
    ids = reply.get("adopting") or []
    print(f"the system master adopts {len(ids)} session{'s' if len(ids) != 1 else ''}"
          + (": " + ", ".join(ids) if ids else ""))
    return EXIT_OK


def user_socket() -> str:
    """This user's own master's socket ($CONFABD_SOCKET, the configured one, or the default)."""
    return client.socket_candidates()[0][0]


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process `pid` exited (a zombie has) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    return False

