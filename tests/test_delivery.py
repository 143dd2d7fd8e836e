"""Delivery you can trust: reproductions of the ways a line was lost, misnumbered or given up on.

Each test reproduces one finding of the 2026-12 fault soak through a real
worker process and the test backend, and fails on the code before its fix.
"""

from __future__ import annotations

import fcntl
import json
import os

import msgspec
import pytest

from confabd import worker_api as api
from confabd.records import FileProgress, InboxRecord, State
from tests.fakebackend import FakeBackend
from tests.waiting import wait_until
from tests.workers import Home, file_lines


@pytest.fixture
def backend():
    with FakeBackend() as b:
        yield b


@pytest.fixture
def home(tmp_path, backend):
    h = Home(tmp_path)
    h.configure_backend(backend.url, backend.api_key)
    return h


def numbered(prefix: str, start: int, n: int, width: int = 0) -> bytes:
    return b"".join(b'{"type":"x","id":"%s-%0*d"}\n' % (prefix.encode(), width, i) for i in range(start, start + n))


def delivered(backend, eid, path) -> bool:
    return backend.lines(eid, path.name) == file_lines(path)


def test_an_agent_named_before_its_file_exists_is_uploaded_after_a_restart(backend, home, workers):
    """Beside layout: the naming line is synced, the worker restarts, then agent-<id>.jsonl appears."""
    eid, agent_id = "named-early", "a0b1c2d3e4f5"
    path = home.transcript(eid)
    path.write_bytes(numbered("m", 0, 3) + b'{"type":"user","toolUseResult":{"agentId":"%s"}}\n' % agent_id.encode())
    first = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), what="the naming line on the backend")
    first.kill()
    second = workers(home, eid, path)
    with open(path, "ab") as f:
        f.write(numbered("m", 3, 1))
    wait_until(lambda: delivered(backend, eid, path), what="the restarted worker's first pass")
    agent = home.project / f"agent-{agent_id}.jsonl"
    agent.write_bytes(numbered("agent", 0, 4))
    wait_until(lambda: delivered(backend, eid, agent), timeout=30, what="the agent file, named before a restart")
    second.finish()
    assert second.wait_exit() == api.EXIT_DONE


def test_an_aligned_truncation_in_place_is_recounted_not_trusted(backend, home, workers):
    """Rewritten in place so that a newline falls exactly where line 6 used to start: line 6 is the new 6th."""
    eid = "aligned"
    path = home.transcript(eid)
    old = numbered("old", 0, 5, width=2)  # 5 lines of equal length
    path.write_bytes(old)
    first = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), what="the first five lines")
    first.kill()
    # Three lines of exactly the old five's length, then seven more: the same inode, and the byte
    # before the cached offset is a newline, but the file's line 6 is now "new-06".
    line = b'{"type":"x","id":"new-%02d"}\n'
    head = [line % i for i in range(3)]
    pad = len(old) - sum(map(len, head))
    head[2] = head[2][:-2] + b" " * pad + b"}\n"
    new = b"".join(head) + b"".join(line % i for i in range(3, 10))
    assert len(b"".join(head)) == len(old)
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(new)
    second = workers(home, eid, path)
    wait_until(lambda: len(backend.lines(eid, path.name)) >= 10, what="ten lines on the backend")
    second.finish()
    assert second.wait_exit() == api.EXIT_DONE
    lines = backend.lines(eid, path.name)
    assert lines[:5] == [l.decode() for l in old.splitlines()]
    assert lines[5:] == [l.decode() for l in new.splitlines()[5:]], "line 6 onwards must be the file's own"
    assert len(lines) == 10


def test_finish_while_another_process_holds_the_transcript_lock_waits_for_it(backend, home, workers):
    """A SessionEnd while an orphaned uploader holds the flock: wait, never 'nothing to sync'."""
    eid = "locked"
    path = home.transcript(eid)
    path.write_bytes(numbered("l", 0, 6))
    home.sync_dir.mkdir(parents=True, exist_ok=True)
    hook_input = {"session_id": eid, "hook_event_name": "SessionEnd", "reason": "exit"}
    (home.sync_dir / f"{eid}.inbox.jsonl").write_text(json.dumps(
        {"type": "session_end", "timestamp": "2026-12-01T00:00:00Z", "hook_input": hook_input}) + "\n")
    holder = os.open(path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        w = workers(home, eid, path)
        wait_until(lambda: (r := w.last_report()) and "another process is uploading" in r.last_error,
                   what="the worker to see the lock")
        w.finish("SessionEnd")
        w.process.join(1.0)  # long enough to take the wrong turn, which it must not take at all
        assert w.process.is_alive(), "the worker gave up on a locked transcript"
        assert (home.sync_dir / f"{eid}.inbox.jsonl").exists()
    finally:
        os.close(holder)
    assert w.wait_exit() == api.EXIT_DONE
    assert delivered(backend, eid, path)
    [event] = backend.events(eid)
    assert event["payload"] == hook_input


def test_a_lock_never_released_leaves_the_session_unfinished_with_its_state_and_inbox(backend, home, workers):
    eid = "locked-for-good"
    path = home.transcript(eid)
    path.write_bytes(numbered("g", 0, 2))
    holder = os.open(path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        w = workers(home, eid, path, settings=home.settings(shutdown_timeout_ms=1_000))
        wait_until(lambda: (r := w.last_report()) and "another process is uploading" in r.last_error,
                   what="the worker to see the lock")
        home.store().append_inbox(eid, InboxRecord(type="session_end", hook_input={"session_id": eid}))
        w.finish("SessionEnd")
        assert w.wait_exit() == api.EXIT_UNFINISHED
    finally:
        os.close(holder)
    assert state_of(home, eid).finishing
    assert (home.sync_dir / f"{eid}.inbox.jsonl").exists(), "the hook input was discarded"
    assert backend.events(eid) == []


def test_404_from_init_is_an_outage_not_a_deleted_session(backend, home, workers):
    """A wrong path prefix, a proxy or an old server answers init with 404: keep the data, retry."""
    eid = "init-404"
    path = home.transcript(eid)
    path.write_bytes(numbered("i", 0, 4))
    backend.fail_next(4, 404, path="init", message="404 page not found")
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), timeout=60, what="delivery after init 404s")
    assert w.process.is_alive()
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert len(backend.events(eid)) == 1


def test_a_negative_byte_offset_in_state_is_recounted(backend, home, workers):
    eid = "negative-offset"
    path = home.transcript(eid)
    path.write_bytes(numbered("n", 0, 5))
    home.sync_dir.mkdir(parents=True, exist_ok=True)
    state = State(external_id=eid, transcript_path=str(path),
                  files={path.name: FileProgress(last_synced_line=0, byte_offset=-7, inode=os.stat(path).st_ino)})
    (home.sync_dir / f"{eid}.json").write_bytes(msgspec.json.encode(state))
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), what="delivery despite a negative offset in State")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero"])
def test_a_transcript_that_is_not_a_regular_file_is_refused_not_read(backend, home, workers, kind):
    eid = f"not-a-file-{kind}"
    path = home.transcript(eid)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    w = workers(home, eid, path)
    wait_until(lambda: (r := w.last_report()) and "not a regular file" in r.last_error, timeout=30,
               what="the worker to say why it cannot read the transcript")
    w.finish()
    assert w.wait_exit(30) == api.EXIT_UNFINISHED  # nothing delivered, so the State is kept, not forgotten
    assert (home.sync_dir / f"{eid}.json").exists()
    assert backend.events(eid) == []


def naming_line(agent_id: str) -> bytes:
    return b'{"type":"user","toolUseResult":{"agentId":"%s"}}\n' % agent_id.encode()


def state_of(home, eid) -> State:
    return msgspec.json.decode((home.sync_dir / f"{eid}.json").read_bytes(), type=State)


def test_a_worker_killed_after_the_backend_committed_the_naming_chunk_still_uploads_the_agent(
        backend, home, workers):
    """Item 2: kill -9 between the backend's commit of the chunk naming an agent and its answer."""
    eid, agent_id = "killed-mid-chunk", "b1c2d3e4f5a6"
    path = home.transcript(eid)
    path.write_bytes(numbered("m", 0, 2))
    first = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), what="the first lines")
    gate = backend.gate("chunk")
    with open(path, "ab") as f:
        f.write(naming_line(agent_id))
    wait_until(gate.arrived.is_set, what="the chunk naming the agent to reach the backend")
    first.kill()  # it never hears the answer
    gate.release()
    wait_until(lambda: delivered(backend, eid, path), what="the held chunk committed after the kill")
    second = workers(home, eid, path)
    wait_until(lambda: (r := second.last_report()) and r.phase == "syncing", what="the restarted worker's first pass")
    agent = home.project / f"agent-{agent_id}.jsonl"
    agent.write_bytes(numbered("agent", 0, 3))
    wait_until(lambda: delivered(backend, eid, agent), what="the agent file named by the chunk whose answer was lost")
    second.finish()
    assert second.wait_exit() == api.EXIT_DONE
    assert backend.file_types(eid)[agent.name] == "agent"


# ---------------------------------------------------------------------------
# Item 8: what cannot be delivered stays visible and recoverable.


def test_a_blocked_file_keeps_the_session_unfinished_and_says_why(backend, home, workers):
    eid = "blocked-400"
    path = home.transcript(eid)
    path.write_bytes(numbered("b", 0, 3))
    backend.fail_next(1, 400, path="chunk", message="metadata.summary exceeds 2048 characters")
    w = workers(home, eid, path)
    wait_until(lambda: (r := w.last_report()) and "refused lines 1-3" in r.last_error, what="the refusal reported")
    w.finish()
    assert w.wait_exit() == api.EXIT_BLOCKED
    state = state_of(home, eid)
    assert state.finishing and path.name in state.blocked and "refused" in state.blocked[path.name]
    assert "not finished" in w.reports[-1].last_error
    assert backend.events(eid) == [], "session_end before every file was delivered"
    # Recoverable: the next attempt (the master's retry) delivers it all, then ends the session.
    again = workers(home, eid, path, finish_reason="retry")
    assert again.wait_exit() == api.EXIT_DONE
    assert delivered(backend, eid, path) and len(backend.events(eid)) == 1
    assert not (home.sync_dir / f"{eid}.json").exists()


def test_an_oversized_line_blocks_only_when_configured_and_then_the_session_stays_unfinished(backend, home, workers):
    eid = "oversized-block"
    path = home.transcript(eid)
    path.write_bytes(b'{"n":1}\n' + b'{"blob":"' + b"x" * (15 << 20) + b'"}\n' + b'{"n":3}\n')
    w = workers(home, eid, path, settings=home.settings(oversized_lines="block"))
    wait_until(lambda: (r := w.last_report()) and "line 2" in r.last_error, what="the oversized line reported")
    w.finish()
    assert w.wait_exit() == api.EXIT_BLOCKED
    assert "line 2" in state_of(home, eid).blocked[path.name]
    assert backend.events(eid) == []


def test_an_oversized_line_goes_out_as_a_marked_stand_in_by_default(backend, home, workers):
    import hashlib
    import json as _json

    eid = "oversized-default"
    path = home.transcript(eid)
    huge = b'{"blob":"' + b"y" * (15 << 20) + b'"}'
    path.write_bytes(b'{"n":1}\n' + huge + b"\n" + b'{"n":3}\n')
    w = workers(home, eid, path)
    wait_until(lambda: len(backend.lines(eid, path.name)) == 3, what="the stand-in and the line after it")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    lines = backend.lines(eid, path.name)
    stand_in = _json.loads(lines[1])
    assert stand_in["original_bytes"] == len(huge) and stand_in["line"] == 2
    assert stand_in["sha256"] == hashlib.sha256(huge).hexdigest()
    assert lines[0] == '{"n":1}' and lines[2] == '{"n":3}'


# ---------------------------------------------------------------------------
# Item 10: the per-file chunk cap.


def test_at_the_servers_chunk_cap_the_file_is_blocked_clearly_and_not_finished(home, workers):
    with FakeBackend(max_chunks_per_file=2) as capped:
        home.configure_backend(capped.url, capped.api_key)
        eid = "capped"
        path = home.transcript(eid)
        path.write_bytes(numbered("c", 0, 1))
        w = workers(home, eid, path)
        for n in (2, 3):
            wait_until(lambda: len(capped.lines(eid, path.name)) == n - 1, what=f"chunk {n - 1}")
            with open(path, "ab") as f:
                f.write(numbered("c", n - 1, 1))
        wait_until(lambda: (r := w.last_report()) and "limit of chunks per file" in r.last_error,
                   what="the cap reported")
        w.finish()
        assert w.wait_exit() == api.EXIT_BLOCKED
        assert "limit of chunks" in state_of(home, eid).blocked[path.name]
        assert capped.events(eid) == []


def test_chunks_grow_as_a_file_nears_the_cap(backend, home, workers):
    """Planned against a cap of 60 chunks: after 2 chunks (1/30) lines wait and go out together."""
    eid = "spacing"
    path = home.transcript(eid)
    path.write_bytes(numbered("s", 0, 1))
    w = workers(home, eid, path, settings=home.settings(max_chunks_per_file=60))
    wait_until(lambda: len(backend.lines(eid, path.name)) == 1, what="chunk 1")
    with open(path, "ab") as f:
        f.write(numbered("s", 1, 1))
    wait_until(lambda: len(backend.lines(eid, path.name)) == 2, what="chunk 2")
    for i in range(2, 10):  # one line per sync cycle: without spacing, one chunk each
        with open(path, "ab") as f:
            f.write(numbered("s", i, 1))
        seen = len(w.read_reports())
        wait_until(lambda: len(w.read_reports()) >= seen + 2, what="two more cycles")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert delivered(backend, eid, path)
    assert backend.chunk_counts(eid)[path.name] <= 4, backend.chunk_counts(eid)
    assert state_of_gone(home, eid)


def state_of_gone(home, eid) -> bool:
    return not (home.sync_dir / f"{eid}.json").exists()


def test_chunk_spacing_keeps_a_realistic_session_far_from_the_cap():
    from confabd.engine import chunk_spacing

    assert chunk_spacing(0) == chunk_spacing(999) == 0
    assert chunk_spacing(1_000) == 30 and chunk_spacing(6_000) == 60
    assert chunk_spacing(29_900) == float("inf")  # the rest is for final syncs
    hours_to_cap = sum(chunk_spacing(c) for c in range(1_000, 29_900)) / 3600
    assert hours_to_cap > 2_000  # (one chunk every cycle: ~250 hours)


# ---------------------------------------------------------------------------
# Item 11: backoff that lives across cycles and restarts.


def failed_request_times(backend, endpoint="init"):
    return [e["time"] for e in backend.requests_log() if e["endpoint"] == endpoint and e["status"] >= 500]


def test_backoff_grows_across_cycles_and_worker_restarts(backend, home, workers):
    eid = "backoff"
    path = home.transcript(eid)
    path.write_bytes(numbered("k", 0, 2))
    backend.fail_next(4, 503, path="init")
    first = workers(home, eid, path)
    wait_until(lambda: state_of(home, eid).backoff.failures >= 3, what="the third failure in State")
    first.kill()
    second = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), timeout=60, what="delivery after four failures")
    second.finish()
    assert second.wait_exit() == api.EXIT_DONE
    times = failed_request_times(backend)
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Equal jitter: after failure n the wait is between 2^(n-2) and 2^(n-1) s; the
    # third gap spans the restart, so the new worker kept the old one's backoff.
    for n, gap in enumerate(gaps, start=1):
        assert gap >= 2 ** (n - 2), f"retry {n + 1} came {gap:.2f} s after failure {n}: {gaps}"


def test_retry_after_is_honoured(backend, home, workers):
    eid = "retry-after"
    path = home.transcript(eid)
    path.write_bytes(numbered("r", 0, 2))
    backend.fail_next(1, 429, retry_after=3, path="init")
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), timeout=60, what="delivery after a 429")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    inits = [e for e in backend.requests_log() if e["endpoint"] == "init"]
    assert inits[0]["status"] == 429
    assert inits[1]["time"] - inits[0]["time"] >= 3.0


def test_retry_delay_schedule():
    from confabd.sinks import retry_delay

    assert retry_delay(1, 20) == 20 and retry_delay(3, 3600) == 3600
    assert retry_delay(1, 0.5, rng=lambda: 0) == 0.5  # under 1 s: the normal backoff
    assert retry_delay(10, 7200, rng=lambda: 1) == 60  # over 3,600 s: the normal backoff, capped
    assert [retry_delay(n, rng=lambda: 0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert max(retry_delay(50, rng=lambda: 1) for _ in range(3)) == 60


def test_the_final_sync_retries_inside_its_deadline(backend, home, workers):
    eid = "final-retries"
    path = home.transcript(eid)
    path.write_bytes(numbered("f", 0, 3))
    backend.fail_next(3, 503)
    w = workers(home, eid, path, finish_reason="test")
    assert w.wait_exit() == api.EXIT_DONE
    assert delivered(backend, eid, path) and len(backend.events(eid)) == 1


def test_a_finish_ends_within_the_shutdown_timeout_against_a_stalled_backend(backend, home, workers):
    eid = "final-deadline"
    path = home.transcript(eid)
    path.write_bytes(numbered("d", 0, 3))
    backend.delay_next(5, 60, path="init")
    settings = home.settings(shutdown_timeout_ms=2_000, http_timeout_s=30)
    w = workers(home, eid, path, settings=settings, finish_reason="test")
    assert w.wait_exit(timeout=20) == api.EXIT_UNFINISHED  # the read timeout alone would take 30 s
    assert (home.sync_dir / f"{eid}.json").exists()


def test_an_invalid_state_is_set_aside_and_its_pending_agents_salvaged(backend, home, workers):
    """A State made invalid by one bad value (a negative offset) is not thrown away whole: it is
    kept beside as <id>.json.invalid, and what is valid in it (the pending agent ID) is kept."""
    eid, agent_id = "salvaged", "a9b8c7d6e5f4"
    path = home.transcript(eid)
    path.write_bytes(numbered("m", 0, 3) + b'{"type":"user","toolUseResult":{"agentId":"%s"}}\n' % agent_id.encode())
    first = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), what="the naming line on the backend")
    wait_until(lambda: agent_id in state_of(home, eid).pending_agents, what="the agent ID pending in State")
    first.kill()
    state_path = home.sync_dir / f"{eid}.json"
    raw = json.loads(state_path.read_bytes())
    raw["files"][path.name]["byte_offset"] = -7
    state_path.write_text(json.dumps(raw))
    second = workers(home, eid, path)
    agent = home.project / f"agent-{agent_id}.jsonl"
    agent.write_bytes(numbered("agent", 0, 4))
    wait_until(lambda: delivered(backend, eid, agent), timeout=30, what="the agent named in the invalid State")
    aside = home.sync_dir / f"{eid}.json.invalid"
    assert json.loads(aside.read_bytes()) == raw  # kept as it was, for a human to look at
    second.finish()
    assert second.wait_exit() == api.EXIT_DONE
    assert not state_path.exists()


def test_an_unreadable_transcript_is_reported_and_the_session_kept_not_crash_looped(backend, workers):
    """EACCES for real: the worker runs as a throwaway user and the transcript is root's, 0600.
    It says why in its report and State, stays up (no crash loop), and syncs once it may read."""
    import pwd
    import secrets
    import shutil
    import subprocess
    from pathlib import Path

    from confabd.privileges import User
    from tests.conftest import require_root_for
    from tests.workers import decode_state

    require_root_for("a worker as a throwaway user", "CONFABD_TEST_USERS", "sudo tests/run-tests tests/test_delivery.py")
    if not shutil.which("useradd"):
        pytest.skip("needs useradd")
    name = "cfdeacces" + secrets.token_hex(3)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        home = Home(Path(entry.pw_dir) / "t")
        home.configure_backend(backend.url, backend.api_key)
        subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", entry.pw_dir], check=True)
        eid = "eacces"
        path = home.transcript(eid)
        path.write_bytes(numbered("r", 0, 4))  # root's, 0600: the user may not read it
        path.chmod(0o600)
        w = workers(home, eid, path, run_as=User(entry.pw_uid, entry.pw_gid, name, str(home.path)))
        r = wait_until(lambda: (r := w.last_report()) and "Permission denied" in r.last_error and r,
                       what="EACCES reported")
        assert str(path) in r.last_error
        state = wait_until(lambda: decode_state(home.sync_dir / f"{eid}.json"), what="State written")
        assert "Permission denied" in state.last_error
        assert w.process.is_alive()  # waiting for it, not crashing
        os.chown(path, entry.pw_uid, entry.pw_gid)
        wait_until(lambda: delivered(backend, eid, path), timeout=30, what="delivery once readable")
        w.finish()
        assert w.wait_exit() == api.EXIT_DONE
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "-r", "-f", name], capture_output=True)




def test_a_worker_waiting_for_the_lock_leaves_the_holders_state_alone(backend, home, workers):
    """Found by the master soak: a new master's worker, started while an orphaned worker still held
    the lock, wrote its State just after the orphan had recorded `session_end_sent` in it (read
    before, written after), and sent a second session_end. Until a worker holds the lock it does
    not overwrite a State on disk; once it does, it reads it."""
    eid = "lock-waiter"
    path = home.transcript(eid)
    path.write_bytes(numbered("w", 0, 4))
    home.sync_dir.mkdir(parents=True, exist_ok=True)
    state_path = home.sync_dir / f"{eid}.json"
    held = msgspec.json.encode(State(external_id=eid, transcript_path=str(path), finishing=True,
                                     session_end_sent=True, pending_agents=["a1b2c3d4"]))
    state_path.write_bytes(held)  # the holder's, session_end accepted
    holder = os.open(path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        w = workers(home, eid, path, finish_reason="SessionEnd")
        wait_until(lambda: (r := w.last_report()) and "another process is uploading" in r.last_error,
                   what="the worker to see the lock")
        assert state_path.read_bytes() == held
    finally:
        os.close(holder)
    assert w.wait_exit() == api.EXIT_DONE
    assert backend.events(eid) == []  # the holder sent it
    assert delivered(backend, eid, path)


def test_a_replaced_transcript_does_not_let_a_second_worker_upload_beside_the_first(backend, home, workers):
    """The flock on the transcript is per inode: once the file is replaced by a rename, a new worker (a new
    master's, beside a killed master's orphan) could lock the new inode and upload beside the first one
    (found by the master soak: two workers of one session, each sending its session_end). The session's
    own lock file in the sync dir is taken too: the second waits until the first is gone."""
    eid = "replaced-beside"
    path = home.transcript(eid)
    path.write_bytes(numbered("r", 0, 4))
    first = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path), what="the first worker's upload")
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(numbered("r", 0, 6))
    os.replace(fresh, path)  # a new inode at the same path
    second = workers(home, eid, path)
    wait_until(lambda: (r := second.last_report()) and "another process is uploading" in r.last_error,
               what="the second worker to wait for the first")
    assert second.process.is_alive()
    first.process.terminate()  # suspended: State kept
    first.process.join(30)
    wait_until(lambda: delivered(backend, eid, path), what="the second worker's upload once the first is gone")
    second.finish("SessionEnd")
    assert second.wait_exit() == api.EXIT_DONE
    assert backend.lines(eid, path.name) == [l.decode() for l in numbered("r", 0, 6).splitlines()]
    assert not (home.sync_dir / f"{eid}.lock").exists()
