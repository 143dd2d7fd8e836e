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
from confabd.records import FileProgress, State
from tests.fakebackend import FakeBackend
from tests.waiting import wait_until
from tests.workers import Home, WorkerProcess, file_lines


@pytest.fixture
def backend():
    with FakeBackend() as b:
        yield b


@pytest.fixture
def home(tmp_path, backend):
    h = Home(tmp_path)
    h.configure_backend(backend.url, backend.api_key)
    return h


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []

    def start(*args, **kwargs) -> WorkerProcess:
        w = WorkerProcess(*args, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


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
