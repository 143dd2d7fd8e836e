"""The control requests: one handler per request type, each returning its reply.

Every request acts for an owner, whom the tenancy names from the peer's
credentials (tenancy.py), and may first be throttled. A handler validates
its input, asks the tenancy what this owner may do, and leaves the session's
life to confabd.sessions. It returns the reply dict, or None when the reply
comes later (`stop --wait`): the session then calls back, and the reply is
resumed on the connection.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import msgspec

from . import __version__, control, providers, worker_api
from .control_server import Connection, ControlServer
from .parents import find_claude, process_identity
from .privileges import PrivilegeError
from .records import InvalidExternalId, validate_external_id
from .sessions import Registration, Session, Sessions

log = logging.getLogger("confabd.master")

# A SessionEnd hook input travels in `finish` only when the hook could not write it to the inbox;
# real ones are a few hundred bytes. A larger one is dropped (the worker then sends a synthetic
# session_end) so that what the master holds and sends a worker stays small.
MAX_HOOK_INPUT = 64 << 10

HANDLERS = {
    control.Ping: "ping",
    control.Status: "status",
    control.Register: "register",
    control.Finish: "finish",
    control.Shutdown: "shutdown",
    control.Retry: "retry",
    control.Forget: "forget",
    control.Reload: "reload",
    control.Adopt: "adopt",
    control.Metrics: "metrics",
}


def announcer_gone(hint: int) -> bool:
    """The hook named its agent's pid (`claude_pid_hint`) and no such process exists."""
    return hint > 1 and process_identity(hint) is None


class Commands:
    def __init__(self, sessions: Sessions, tenancy, server: ControlServer, *,
                 describe_master: Callable[[], dict], shutdown: Callable[[], None],
                 reload: Callable[[], str] = lambda: "this master cannot reload its settings",
                 adoption=None, meter=None):
        self.sessions = sessions
        self.tenancy = tenancy
        self.server = server
        self.describe_master = describe_master  # status's `master` object
        self.request_shutdown = shutdown
        self.reload_settings = reload  # "" when the new settings were taken, else why not
        self.adoption = adoption  # confabd.adoption.Adoption: `adopt` (handover)
        self.meter = meter  # confabd.metrics.Metrics: per-sink totals for status and `metrics`

    def handle(self, conn: Connection, request) -> Optional[dict]:
        """The reply to one request; None when the reply comes later (stop --wait)."""
        owner = self.tenancy.owner(conn.peer)
        refusal = self.tenancy.throttle(owner)
        if refusal is not None:
            return control.error(refusal.message, retry_after=round(refusal.retry_after, 3))
        name = HANDLERS.get(type(request))
        if name is None:
            return control.error(f"unsupported request {type(request).__name__}")
        return getattr(self, name)(conn, owner, request)

    def ping(self, conn: Connection, owner: int, request: control.Ping) -> dict:
        return control.reply(pid=os.getpid(), version=__version__)

    def status(self, conn: Connection, owner: int, request: control.Status) -> dict:
        if request.external_id is None:
            sessions = self.sessions.visible_to(owner)
        else:
            session = self.sessions.find(owner, request.external_id)
            if session is None:
                return control.error(f"no session {request.external_id!r}")
            sessions = [session]
        return control.reply(master=self.describe_master(),
                             sessions=[self.sessions.status_row(s) for s in sessions],
                             sinks=self.meter.sinks_json(self.sink_totals(owner)) if self.meter else [])

    def sink_totals(self, owner: int) -> list:
        return self.meter.sink_totals(lambda o: self.tenancy.may_see(owner, o), self.sessions.visible_to(owner))

    def metrics(self, conn: Connection, owner: int, request: control.Metrics) -> dict:
        if self.meter is None:
            return control.error("this master keeps no metrics")
        rows = [self.sessions.status_row(s) for s in self.sessions.visible_to(owner)]
        totals = self.sink_totals(owner)
        return control.reply(text=self.meter.prometheus(rows, totals), sinks=self.meter.sinks_json(totals),
                             sessions=self.meter.states(rows), providers=self.meter.providers(rows))

    def register(self, conn: Connection, owner: int, request: control.Register) -> Optional[dict]:
        try:
            external_id = validate_external_id(request.external_id)
        except InvalidExternalId as exc:
            return control.error(str(exc))
        if not request.transcript_path:
            return control.error("a transcript path is required")
        try:
            providers.check_name(request.provider)
        except providers.UnknownProvider as exc:
            return control.error(str(exc))
        transcript = os.path.abspath(request.transcript_path)
        answer = self.registration_answer(owner, external_id, transcript)
        if answer is not None:
            return answer

        def checked(reply, problem: str) -> None:
            if problem:
                log.warning("session %s of uid %d refused: %s", external_id, owner, problem)
                reply(control.error(problem))
                return
            # The world may have moved while the helper ran: look again.
            reply(self.registration_answer(owner, external_id, transcript)
                  or self.start_session(conn, owner, external_id, transcript, request))

        return self.answer_later(conn, lambda reply: self.tenancy.check_transcript(
            owner, transcript, lambda problem: self.safely(reply, checked, reply, problem)))

    def registration_answer(self, owner: int, external_id: str, transcript: str) -> Optional[dict]:
        """The answer to a registration that needs no new session (or is refused); None: go on."""
        if self.sessions.stopping:
            return control.error("the master is shutting down")
        session = self.sessions.get(owner, external_id)
        if session is not None and session.transcript_path != transcript:
            return control.error(
                f"session {external_id} is already registered with transcript "
                f"{session.transcript_path}; refusing a second registration from {transcript}")
        if session is not None and session.running:
            return control.reply(registered=False, worker_pid=session.proc.pid if session.proc else None)
        if session is None or session.phase == worker_api.Phase.FAILED:
            refusal = self.tenancy.session_cap_refusal(owner, self.sessions.live_count(owner))
            if refusal:
                log.warning("session %s of uid %d refused: %s", external_id, owner, refusal)
                return control.error(refusal)
        return None

    def start_session(self, conn: Connection, owner: int, external_id: str, transcript: str,
                      request: control.Register) -> dict:
        parent = self.find_parent(conn, owner, external_id, request)
        if isinstance(parent, str):
            return control.error(parent)
        parent_pid, create_time = parent
        # A hook's session gets its worker once the hook has its answer and has gone: the hook (and
        # the agent that runs it) waits for nothing else, and does not use the worker's pid.
        from_hook = bool(request.hook_pid)
        session = self.sessions.register(
            Registration(owner, external_id, transcript, request.cwd, parent_pid, create_time,
                         provider=request.provider, model=request.model, config_dir=request.config_dir),
            deferred=from_hook)
        if session is not None and from_hook:
            conn.on_close.append(lambda: self.sessions.begin_deferred(session))
        if session is None:
            return control.reply(registered=False,
                                 note="the session is finishing; it starts again once that is done")
        if not parent_pid and request.hook_pid and announcer_gone(request.claude_pid_hint):
            # The agent that announced it has exited already (OpenCode's plugin can fire after it
            # exits): nothing will ever end this session, so it is finished now, after its final sync.
            self.sessions.finish(session, worker_api.parent_gone(request.claude_pid_hint,
                                                                 providers.get(request.provider).label))
        return control.reply(registered=True, worker_pid=session.proc.pid if session.proc else None,
                             parent_pid=parent_pid or None)

    def answer_later(self, conn: Connection, start: Callable[[Callable[[dict], None]], None]) -> Optional[dict]:
        """Run `start(reply)`: the answer if it replied at once, else None (the reply resumes
        the connection when it comes: a helper answered, a session ended). PrivilegeError: no
        helper could run; that is the answer."""
        returned = False
        answered: list[dict] = []

        def reply(answer: dict) -> None:
            if returned:
                self.server.resume(conn, answer)
            else:
                answered.append(answer)
        try:
            start(reply)
        except PrivilegeError as exc:
            reply(control.error(str(exc)))
        returned = True
        return answered[0] if answered else None

    @staticmethod
    def safely(reply: Callable[[dict], None], fn: Callable, *args) -> None:
        """Run a continuation of a request; a bug in it still answers the request (as in serve)."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - the connection must not wait for a reply forever
            log.exception("error handling a control request")
            reply(control.error(f"internal error: {exc}"))

    def find_parent(self, conn: Connection, owner: int, external_id: str,
                    request: control.Register):
        """The session's Claude Code as (pid, create time), (0, 0.0) for none; a str refuses the request.

        A hook names itself (`hook_pid`): Claude Code is found among its
        ancestors. `confabctl start --parent-pid` names it directly, and it must exist.
        """
        if request.hook_pid:
            hook_pid = self.tenancy.hook_pid(conn.peer, request.hook_pid)
            agent = providers.get(request.provider)
            parent_pid, create_time = find_claude(hook_pid, request.parent_pid, request.claude_pid_hint,
                                                  agent.parent_re)
            if parent_pid and not self.tenancy.owns_process(owner, parent_pid):
                parent_pid, create_time = 0, 0.0
            if not parent_pid:
                log.warning("session %s: no %s process among the hook's ancestors; "
                            "parent monitoring is off", external_id, agent.label)
            return parent_pid, create_time
        if request.parent_pid:
            found = process_identity(request.parent_pid)
            if not found or not self.tenancy.owns_process(owner, request.parent_pid):
                return f"parent process {request.parent_pid} does not exist"
            return found[0], found[1]
        return 0, 0.0

    def finish(self, conn: Connection, owner: int, request: control.Finish) -> Optional[dict]:
        """One path for every session, run here or only on disk, and both honour `wait`."""
        try:
            external_id = validate_external_id(request.external_id)
        except InvalidExternalId as exc:
            return control.error(str(exc))
        reason = request.reason or worker_api.STOP_REQUESTED
        hook_input, note = request.hook_input, {}
        if hook_input is not None and len(msgspec.json.encode(hook_input)) > MAX_HOOK_INPUT:
            log.warning("finish of %s by uid %d: dropping a hook input over %d bytes",
                        external_id, owner, MAX_HOOK_INPUT)
            hook_input = None
            note = {"note": f"hook_input over {MAX_HOOK_INPUT} bytes was dropped; "
                            "the session_end is made by the worker"}

        def finish_it(reply, session: Session) -> None:
            self.sessions.finish(session, reason, hook_input)
            if not request.wait:
                reply(control.reply(finishing=True, **note))
                return
            session.waiters.append(lambda error: reply(control.error(error) if error
                                                       else control.reply(finished=True)))

        def loaded(reply, record, error: str) -> None:
            session = self.sessions.find(owner, external_id)  # adopted meanwhile?
            if session is None:
                if error:
                    reply(control.error(f"no session {external_id!r} ({error})"))
                    return
                if record is None:
                    self.tenancy.delete_session(owner, external_id)  # an orphan inbox: nobody will read it
                    reply(control.error(f"no session {external_id!r}"))
                    return
                refusal = self.adoption_refusal(owner)
                if refusal:
                    reply(control.error(refusal))
                    return
                self.tenancy.remember(owner)
                session = self.sessions.adopt(record[0], owner, reason, hook_input)
            finish_it(reply, session)

        session = self.sessions.find(owner, external_id)
        if session is not None:
            return self.answer_later(conn, lambda reply: finish_it(reply, session))
        # Not running here: its State may still be on disk. Adopting it makes one more live
        # session, so the cap holds here too (checked again once the State is read).
        refusal = self.adoption_refusal(owner)
        if refusal:
            log.warning("finish of %s by uid %d refused: %s", external_id, owner, refusal)
            return control.error(refusal)
        return self.answer_later(conn, lambda reply: self.tenancy.session_record(
            owner, external_id, lambda record, error: self.safely(reply, loaded, reply, record, error)))

    def adoption_refusal(self, owner: int) -> str:
        if self.sessions.stopping:
            return "the master is shutting down"
        return self.tenancy.session_cap_refusal(owner, self.sessions.live_count(owner))

    def shutdown(self, conn: Connection, owner: int, request: control.Shutdown) -> dict:
        refusal = self.tenancy.shutdown_refusal(owner)
        if refusal:
            return control.error(refusal)
        self.request_shutdown()
        return control.reply()

    # -- the operator's verbs: retry, forget, reload, adopt (docs/CONTROL.md) ---------------

    def retry(self, conn: Connection, owner: int, request: control.Retry) -> dict:
        if self.sessions.stopping:
            return control.error("the master is shutting down")
        session = self.sessions.find(owner, request.external_id)
        if session is None:
            return control.error(f"no session {request.external_id!r}")
        was = session.phase
        if was == worker_api.Phase.FAILED:  # a failed session is not counted live: it would be now
            refusal = self.tenancy.session_cap_refusal(session.owner, self.sessions.live_count(session.owner))
            if refusal:
                return control.error(refusal)
        self.sessions.retry(session)
        return control.reply(was=was, state=session.phase,
                             worker_pid=session.proc.pid if session.proc else None)

    def forget(self, conn: Connection, owner: int, request: control.Forget) -> Optional[dict]:
        """Only a session no worker runs (failed, backoff, or a State on disk alone): a running
        one is finished with `stop`, which delivers its lines first."""
        try:
            external_id = validate_external_id(request.external_id)
        except InvalidExternalId as exc:
            return control.error(str(exc))
        session = self.sessions.find(owner, external_id)
        if session is not None and session.alive:
            return control.error(f"session {external_id} has a worker running ({session.phase}); "
                                 "`confabctl stop` finishes it, delivering its lines first; forget only drops "
                                 "a session whose worker does not run (failed, backoff)")
        whose = session.owner if session is not None else owner

        def removed(reply, error: str) -> None:
            if error:
                reply(control.error(f"session {external_id}: cannot remove its files: {error}"))
            else:
                reply(control.reply(forgotten=True, was=was))

        def loaded(reply, record, error: str) -> None:
            if self.sessions.find(owner, external_id) is not None:  # registered meanwhile
                reply(control.error(f"session {external_id} was registered meanwhile; not forgotten"))
            elif error or record is None:
                reply(control.error(f"no session {external_id!r}" + (f" ({error})" if error else "")))
            else:
                self.tenancy.delete_session(whose, external_id, lambda e: self.safely(reply, removed, reply, e))

        if session is not None:
            was = session.phase
            self.sessions.abandon(session)
            return self.answer_later(conn, lambda reply: self.tenancy.delete_session(
                whose, external_id, lambda e: self.safely(reply, removed, reply, e)))
        was = "on disk"
        return self.answer_later(conn, lambda reply: self.tenancy.session_record(
            owner, external_id, lambda record, error: self.safely(reply, loaded, reply, record, error),
            counted=True))

    def reload(self, conn: Connection, owner: int, request: control.Reload) -> dict:
        refusal = self.tenancy.reload_refusal(owner)
        if refusal:
            return control.error(refusal)
        problem = self.reload_settings()
        if problem:
            return control.error(f"settings not reloaded, the current ones are kept: {problem}")
        return control.reply(reloaded=True, workers=self.sessions.worker_count())

    def adopt(self, conn: Connection, owner: int, request: control.Adopt) -> Optional[dict]:
        if self.sessions.stopping:
            return control.error("the master is shutting down")
        self.tenancy.remember(owner)

        def listed(reply, ids: list[str], error: str) -> None:
            reply(control.error(f"cannot list your sessions: {error}") if error
                  else control.reply(adopting=sorted(ids)))
        return self.answer_later(conn, lambda reply: self.adoption.list_again(
            owner, lambda ids, error: self.safely(reply, listed, reply, ids, error), counted=True))
