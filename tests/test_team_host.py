"""System mode on a team host: a host-wide backend_url, `user_masters = "never"`, `confabctl handover`.

Real throwaway users (useradd), a real `confabd --system` master, confabctl run as the users
(the fixtures of test_system_mode). confabctl finds the system config through
CONFABD_SYSTEM_CONFIG, as it finds the system socket through CONFABD_SYSTEM_SOCKET.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import time

import pytest

from tests.conftest import REPO, backend_has_file, fixture_lines, wait_until
from tests.fakebackend import FakeBackend
from tests.test_system_mode import System, backend, pytestmark, users  # noqa: F401 - fixtures

HOOK_RESPONSE = {"continue": True, "suppressOutput": True}


@pytest.fixture
def system(users, backend):  # noqa: F811 - test_system_mode's (its spool dir is in its temp dir)
    s = System(users, backend)
    try:
        yield s
    finally:
        s.close()


def configure(system, text: str) -> None:
    system.config.write_text(system.config.read_text() + text)


def user_env(system, user) -> dict:
    return {"HOME": str(user.home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
            "CONFABD_SYSTEM_SOCKET": str(system.socket), "CONFABD_SYSTEM_CONFIG": str(system.config),
            "PYTHONDONTWRITEBYTECODE": "1"}


def python_as(system, user, *args, input=None):
    """The user's Python, as the user, knowing where the system master's socket and config are."""
    cmd = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", system.python[user.name], *args]
    return subprocess.run(cmd, env=user_env(system, user), cwd=str(user.home), input=input, capture_output=True,
                          text=True, timeout=60)


def ctl(system, user, *args, input=None):
    return python_as(system, user, "-m", "confabd.ctl", *args, input=input)


def hook(system, user, event, eid, transcript, **extra):
    payload = {"session_id": eid, "transcript_path": str(transcript), "cwd": "/home/proj",
               "hook_event_name": "SessionStart" if event == "session-start" else "SessionEnd", **extra}
    return ctl(system, user, "hook", event, input=json.dumps(payload))


def user_config(user, **values) -> None:
    path = user.home / ".confab" / "config.json"
    path.write_text(json.dumps(values))
    os.chown(path, user.uid, user.gid)
    path.chmod(0o600)


def test_host_wide_backend_url_with_each_users_own_key_and_own_url_first(system, users, backend):
    a, b = users
    configure(system, f'backend_url = "{backend.url}"\n')
    user_config(a, api_key=a.key)  # no backend_url of their own: the host's
    with FakeBackend(api_keys=(b.key,)) as own:
        user_config(b, backend_url=own.url, api_key=b.key)  # their own: their key goes there only
        try:
            seen_before = len(backend.requests_log())
            system.start()
            sessions = {}
            for user in (a, b):
                eid = f"hostwide-{user.name}"
                path = user.transcript(eid, fixture_lines())
                r = hook(system, user, "session-start", eid, path)
                assert r.returncode == 0 and r.stderr == "", r.stderr
                sessions[user.name] = (eid, path)
            eid, path = sessions[a.name]
            backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
            with backend._lock:
                assert backend._find(eid).owner == a.key
            eid, path = sessions[b.name]
            own.wait_for(lambda: backend_has_file(own, eid, path), timeout=30)
            assert backend.session_id(eid) is None  # b's key was never shown to the host's backend
            refused = [e for e in backend.requests_log()[seen_before:] if e["status"] in (401, 403)]
            assert refused == []  # nobody's key was tried on a backend it does not belong to
        finally:
            system.stop()
            for user in (a, b):
                user_config(user, backend_url=backend.url, api_key=user.key)


def test_user_masters_never_the_hook_leaves_its_record_and_the_system_master_adopts_it(system, users, backend):
    a, _b = users
    configure(system, 'user_masters = "never"\n')
    system.start()  # makes the spool dir
    assert oct(system.spool.stat().st_mode & 0o7777) == "0o1733"
    system.stop()
    lines = fixture_lines()
    live, ended = "while-down-live", "while-down-ended"
    live_path, ended_path = a.transcript(live, lines), a.transcript(ended, lines)
    for eid, path in ((live, live_path), (ended, ended_path)):
        started = time.monotonic()
        r = hook(system, a, "session-start", eid, path)
        took = time.monotonic() - started
        assert r.returncode == 0 and json.loads(r.stdout) == HOOK_RESPONSE, r
        assert 'user_masters = "never"' in r.stderr and "recorded in" in r.stderr, r.stderr
        assert took < 5.0, took  # no master started and waited for (that is 8 s of retries)
    r = hook(system, a, "session-end", ended, ended_path, reason="exit")
    assert r.returncode == 0 and json.loads(r.stdout) == HOOK_RESPONSE, r
    for _ in range(2):  # the prompt hook runs on every prompt: one note per session all the same
        assert hook(system, a, "user-prompt-submit", live, live_path).returncode == 0
    assert sorted(os.listdir(system.spool)) == [f"uid{a.uid}.{ended}", f"uid{a.uid}.{live}"]
    assert not (a.home / ".confab" / "run").exists()  # no user master was started
    assert (a.sync_dir / f"{live}.json").exists() and (a.sync_dir / f"{ended}.inbox.jsonl").exists()
    assert not system.registry.exists() or str(a.uid) not in os.listdir(system.registry)  # only the note says
    system.start()
    backend.wait_for(lambda: backend_has_file(backend, live, live_path), timeout=30)
    backend.wait_for(lambda: len(backend.events(ended)) == 1, timeout=30)
    assert backend.events(ended)[0]["payload"]["reason"] == "exit"  # the hook's own SessionEnd input
    assert backend_has_file(backend, ended, ended_path)
    wait_until(lambda: not (a.sync_dir / f"{ended}.json").exists(), what="the ended session's files removed")
    assert system.status()[live]["uid"] == a.uid
    assert os.listdir(system.spool) == []  # the notes were taken
    assert str(a.uid) in os.listdir(system.registry)  # and the user is listed from now on


def test_a_note_in_the_spool_is_believed_by_its_owner_only(system, users, backend):
    """A note names nobody: its owner (st_uid) is whom the master lists, as that user."""
    a, b = users
    configure(system, "")
    system.start()
    eid = "b-left-it"
    path = b.transcript(eid, fixture_lines())
    b.sync_dir.mkdir(parents=True, exist_ok=True)
    state = b.sync_dir / f"{eid}.json"
    state.write_text(json.dumps({"external_id": eid, "transcript_path": str(path)}))
    for p in (b.sync_dir, state):
        os.chown(p, b.uid, b.gid)
    # A names b's uid in its note: the master believes the owner, a, and lists only a's dir.
    r = python_as(system, a, "-c", f"open({str(system.spool / ('uid' + str(b.uid)))!r}, 'w').close()")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: os.listdir(system.spool) == [], timeout=30, what="the note taken")
    assert eid not in system.status()
    r = python_as(system, b, "-c", "from confabd.hostwide import leave_note; print(leave_note())")
    assert r.returncode == 0 and str(system.spool) in r.stdout, (r.stdout, r.stderr)
    wait_until(lambda: eid in system.status(), timeout=30, what="b's own note honoured")
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)


def user_master(system, user):
    """A user-mode master of the user's own, run as them (site-packages of the test's venv)."""
    site = sysconfig.get_paths()["purelib"]
    env = {"HOME": str(user.home), "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site}",
           "CONFAB_SYNC_INTERVAL_MS": "200", "CONFAB_SYNC_JITTER_MS": "0"}
    log = open(system.root / f"user-master-{user.name}.log", "wb")
    proc = subprocess.Popen(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
                             "/usr/bin/python3", "-m", "confabd.master_cli", "--foreground"],
                            env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    socket = user.home / ".confab" / "run" / "control.sock"
    wait_until(lambda: proc.poll() is not None or (ctl(system, user, "ping", "--json").returncode == 0 and
                                                   str(socket) in ctl(system, user, "ping", "--json").stdout),
               30, what="the user's own master")
    assert proc.poll() is None, (system.root / f"user-master-{user.name}.log").read_text()
    return proc


def test_handover_moves_a_users_sessions_from_their_own_master_to_the_system_master(system, users, backend):
    a, _b = users
    if system.python[a.name] != "/usr/bin/python3" and not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs /usr/bin/python3 for the user's own master")
    configure(system, "")
    system.start()
    r = ctl(system, a, "handover")  # nothing of theirs anywhere: fine, nothing moves
    assert r.returncode == 0 and "adopts 0 sessions" in r.stdout, (r.stdout, r.stderr)
    mine = user_master(system, a)
    try:
        lines = fixture_lines()
        half = len(lines) // 2
        eid = "handed-over"
        path = a.transcript(eid, lines[:half])
        assert hook(system, a, "session-start", eid, path).returncode == 0
        backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
        assert eid not in system.status()  # root's view: the user's own master has it
        r = ctl(system, a, "handover")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert f"stopping your own master (pid {mine.pid})" in r.stdout and eid in r.stdout
        assert mine.wait(30) == 0
        with open(path, "ab") as f:
            f.writelines(lines[half:])
        s = wait_until(lambda: (x := system.status().get(eid)) and x["worker_pid"] and x, 30,
                       what="the session adopted by the system master")
        assert s["uid"] == a.uid
        backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=30)
        assert len(backend.events(eid)) == 0  # moved, not ended
        assert set(system.status(a)) == {eid}
    finally:
        if mine.poll() is None:
            mine.kill()
        mine.wait(10)


def test_handover_without_a_system_master_says_so(system, users):
    a, _b = users
    r = ctl(system, a, "handover")
    assert r.returncode == 3 and "no system master answers" in r.stderr, r.stderr



def test_retry_forget_and_reload_act_for_the_caller_only(system, users, backend):
    import signal

    a, b = users
    system.start()
    eid = "a-fails"
    path = a.transcript(eid, fixture_lines())
    assert hook(system, a, "session-start", eid, path).returncode == 0
    state = a.sync_dir / f"{eid}.json"
    wait_until(state.exists, 30, what="the first worker to write the session's State")  # then kill it
    killed = set()
    while True:  # kill -9 each new worker until the master calls it failed
        s = wait_until(lambda: (x := system.status().get(eid)) and (x["state"] == "failed" or
                                                                   x["worker_pid"] not in killed | {None}) and x,
                       30, what="the next worker, or failed")
        if s["state"] == "failed":
            break
        os.kill(s["worker_pid"], signal.SIGKILL)
        killed.add(s["worker_pid"])
    assert state.exists()
    for verb in (("retry", eid), ("forget", eid, "--yes")):  # b: as if there were no such session
        r = ctl(system, b, *verb)
        assert r.returncode == 1 and f"no session '{eid}'" in r.stderr, r.stderr
    assert system.status()[eid]["state"] == "failed" and state.exists()
    r = ctl(system, a, "forget", eid, "--yes")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: eid not in system.status(), what="forgotten")
    assert not state.exists()  # removed by a helper running as a
    assert backend.events(eid) == []
    r = ctl(system, a, "reload")
    assert r.returncode == 1 and "only root may reload" in r.stderr, r.stderr
    assert system.root_request({"type": "reload"}) == {"ok": True, "error": None, "reloaded": True, "workers": 0}
