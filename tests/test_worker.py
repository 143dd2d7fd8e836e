"""The session worker through a real process, against the real test backend and the real archive."""

from __future__ import annotations

import os
import random
import shutil
import signal

import pytest

from confabd import worker_api as api
from confabd.records import InboxRecord
from confabd.sinks.archive import export_session
from tests.fakebackend import FakeBackend
from tests.waiting import wait_until
from tests.workers import TRANSCRIPTS, Home, decode_state, file_lines

FIXTURE_NAMES = sorted(p.name for p in TRANSCRIPTS.glob("*.jsonl"))


@pytest.fixture
def backend():
    with FakeBackend() as be:
        yield be


@pytest.fixture
def home(tmp_path):
    return Home(tmp_path)


def delivered(backend, eid, name, path):
    """The backend holds every complete line of the file (a half-written last line is not due)."""
    data = path.read_bytes()
    return backend.file_bytes(eid, name) == data[: data.rfind(b"\n") + 1]


# ---------------------------------------------------------------------------
# Fixtures delivered byte-for-byte.


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_fixture_delivered_byte_for_byte_to_backend(fixture, backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "s-" + fixture.replace(".jsonl", "")[:40]
    path = home.copy_fixture(fixture, eid)
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path.name, path), what="all lines on the backend")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert backend.file_bytes(eid, path.name) == path.read_bytes()
    [event] = backend.events(eid)
    assert event["event_type"] == "session_end"
    assert not os.path.exists(home.store().state_path(eid))  # finished: State removed


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_fixture_delivered_byte_for_byte_to_archive(fixture, home, workers, tmp_path):
    eid = "a-" + fixture.replace(".jsonl", "")[:40]
    path = home.copy_fixture(fixture, eid)
    w = workers(home, eid, path)  # no backend configured: the embedded archive is the sink
    wait_until(lambda: w.last_report() and w.last_report().files.get(path.name) == len(file_lines(path)),
               what="worker reports every line archived")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    out = tmp_path / "export"
    export_session(str(home.archive), eid, str(out))
    assert (out / path.name).read_bytes() == path.read_bytes()


# ---------------------------------------------------------------------------
# A growing transcript with a half-written last line at every sync point.


def test_growing_transcript_with_half_lines_delivered_exactly_once(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "growing"
    source = (TRANSCRIPTS / "python-to-rust-port.jsonl").read_bytes()
    path = home.transcript(eid)
    path.write_bytes(b"")
    w = workers(home, eid, path)
    rng = random.Random(7)
    written = 0
    with open(path, "ab") as f:
        while written < len(source):
            step = rng.randint(1, 9000)
            f.write(source[written:written + step])
            f.flush()
            written += step
            complete = source[: written].rsplit(b"\n", 1)[0] + b"\n" if b"\n" in source[:written] else b""
            # each pause ends mid-line most of the time: the worker must only send complete lines
            wait_until(lambda: backend.file_bytes(eid, path.name) == complete, what=f"lines up to byte {written}")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert backend.file_bytes(eid, path.name) == source
    assert backend.counts()["by_status"].get(400, 0) == 0  # never a non-contiguous chunk


# ---------------------------------------------------------------------------
# Subagents.

AGENT_ID = "ab81802"


def _agent_lines(n: int, start: int = 0) -> bytes:
    return b"".join(
        b'{"type":"assistant","isSidechain":true,"agentId":"%s","n":%d}\n' % (AGENT_ID.encode(), i)
        for i in range(start, start + n)
    )


@pytest.mark.parametrize("layout", ["beside", "subagents"])
def test_subagent_discovered_in_both_layouts_and_after_restart(layout, backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "with-agent-" + layout
    path = home.copy_fixture("python-to-rust-port.jsonl", eid)
    agent_dir = home.project if layout == "beside" else home.project / eid / "subagents"
    agent_dir.mkdir(parents=True, exist_ok=True)
    agent = agent_dir / f"agent-{AGENT_ID}.jsonl"
    agent.write_bytes(_agent_lines(5))
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, agent.name, agent), what="agent file delivered")
    w.kill()
    # More agent lines while no worker runs; the new worker must find the file again.
    with open(agent, "ab") as f:
        f.write(_agent_lines(3, start=5))
    w2 = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, agent.name, agent), what="agent file after restart")
    w2.finish()
    assert w2.wait_exit() == api.EXIT_DONE
    assert backend.file_bytes(eid, path.name) == path.read_bytes()
    assert len(backend.lines(eid, agent.name)) == 8


def test_real_subagent_session_layout(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    src = TRANSCRIPTS.parent / "sessions" / "session-with-subagent" / "project-dir"
    eid = "473250f7-35b7-4652-9383-9c93788bab1f"
    shutil.copytree(src, home.project, dirs_exist_ok=True)
    path = home.transcript(eid)
    agent = home.project / eid / "subagents" / "agent-a4037ca51b08194c6.jsonl"
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, agent.name, agent) and delivered(backend, eid, path.name, path))
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert "agent-a4037ca51b08194c6.meta.json" not in backend.files(eid)


# ---------------------------------------------------------------------------
# Faults: every line exactly once.


@pytest.mark.parametrize("fault", ["429", "429-retry-after", "5xx-burst", "timeout", "commit-then-drop"])
def test_faults_deliver_every_line_exactly_once(fault, backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "fault-" + fault
    path = home.transcript(eid)
    source = (TRANSCRIPTS / "coverage-test-fix.jsonl").read_bytes()
    half = source.index(b"\n", len(source) // 2) + 1
    path.write_bytes(source[:half])
    settings = home.settings(http_timeout_s=0.5)
    w = workers(home, eid, path, settings=settings)
    wait_until(lambda: delivered(backend, eid, path.name, path), what="first half")
    if fault == "429":
        backend.fail_next(3, 429, path="chunk")
    elif fault == "429-retry-after":
        backend.fail_next(2, 429, retry_after=1, path="chunk")
    elif fault == "5xx-burst":
        backend.fail_next(2, 500, path="chunk")
        backend.fail_next(2, 503)
    elif fault == "timeout":
        backend.delay_next(2, 1.5, path="chunk")
    else:
        backend.commit_then_drop_next(2, path="chunk")
    with open(path, "ab") as f:
        f.write(source[half:])
    wait_until(lambda: delivered(backend, eid, path.name, path), timeout=60, what="second half after faults")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert backend.file_bytes(eid, path.name) == source
    assert len(backend.events(eid)) == 1


def test_401_then_fixed_credentials_resumes(backend, home, workers):
    eid = "auth"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    home.configure_backend(backend.url, "cfb_" + "x" * 40)  # wrong key
    w = workers(home, eid, path)
    wait_until(lambda: (r := w.last_report()) and "401" in r.last_error, what="401 reported")
    assert backend.lines(eid, path.name) == []
    home.configure_backend(backend.url, backend.api_key)  # the user logs in again
    wait_until(lambda: delivered(backend, eid, path.name, path), what="resumed after fixing the key")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE


def test_404_three_times_finishes_the_session(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "deleted"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path.name, path))
    backend.delete_session(eid)
    with open(path, "ab") as f:
        f.write(b'{"type":"user","n":1}\n')
    assert w.wait_exit(timeout=30) == api.EXIT_DONE
    assert not os.path.exists(home.store().state_path(eid))
    assert backend.session_id(eid) is None  # no new session was created behind the user's back


def test_413_splits_the_chunk(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "split"
    path = home.copy_fixture("python-to-rust-port.jsonl", eid)
    backend.fail_next(1, 413, path="chunk")
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path.name, path))
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    chunks = backend.chunk_counts(eid)[path.name]
    assert chunks >= 2  # the 97 lines went in smaller pieces after the 413


def test_line_over_14_mib_reported_and_other_files_flow(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "huge-line"
    path = home.transcript(eid)
    huge = b'{"type":"assistant","blob":"' + b"x" * (15 * 1024 * 1024) + b'"}\n'
    path.write_bytes(b'{"type":"user","n":1}\n' + huge + b'{"type":"user","n":3}\n')
    agent_dir = home.project / eid / "subagents"
    agent_dir.mkdir(parents=True)
    agent = agent_dir / f"agent-{AGENT_ID}.jsonl"
    agent.write_bytes(_agent_lines(4))
    w = workers(home, eid, path, settings=home.settings(oversized_lines="block"))
    wait_until(lambda: delivered(backend, eid, agent.name, agent), what="the agent file still flows")
    report = wait_until(lambda: (r := w.last_report()) and "line 2" in r.last_error and r)
    assert "MiB" in report.last_error and "oversized_lines" in report.last_error
    assert backend.lines(eid, path.name) == ['{"type":"user","n":1}']
    state = decode_state(home.sync_dir / f"{eid}.json")
    assert "line 2" in state.last_error
    w.close()
    # Configured to truncate: the stand-in goes out and the lines after it follow.
    w2 = workers(home, eid, path, settings=home.settings(oversized_lines="truncate"))
    wait_until(lambda: len(backend.lines(eid, path.name)) == 3, what="truncated stand-in and later line")
    lines = backend.lines(eid, path.name)
    assert '"confabd-truncated-line"' in lines[1] and lines[2] == '{"type":"user","n":3}'
    w2.finish()
    assert w2.wait_exit() == api.EXIT_DONE


# ---------------------------------------------------------------------------
# kill -9 at random moments.


def test_kill_9_at_random_moments_then_exactly_once(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "killed"
    path = home.transcript(eid)
    source = b"".join((TRANSCRIPTS / name).read_bytes() for name in FIXTURE_NAMES)
    rng = random.Random(1234)
    written = 0
    kills = 0
    mid_upload_kills = 0
    path.write_bytes(b"")
    settings = home.settings(sync_interval_ms=20)
    while kills < 20:
        # at least one new complete line, then a random part of the next one
        step = source.index(b"\n", written) + 1 - written + rng.randint(0, 20000)
        with open(path, "ab") as f:
            f.write(source[written:written + step])
        written += step
        w = workers(home, eid, path, settings=settings, restarts=kills)
        # kill it at a random moment: before, during or after its uploads
        before = len(backend.requests_log())
        deadline_requests = before + rng.randint(0, 4)
        wait_until(lambda: len(backend.requests_log()) >= deadline_requests
                   or delivered(backend, eid, path.name, path), timeout=30)
        os.kill(w.process.pid, signal.SIGKILL)
        mid_upload_kills += len(backend.requests_log()) > before
        w.process.join(10)
        kills += 1
    assert mid_upload_kills >= 10  # most kills hit a worker that was talking to the backend
    with open(path, "ab") as f:
        f.write(source[written:])
    w = workers(home, eid, path, settings=settings)
    wait_until(lambda: delivered(backend, eid, path.name, path), timeout=60)
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert backend.file_bytes(eid, path.name) == source
    assert len(backend.events(eid)) == 1


# ---------------------------------------------------------------------------
# Bad input.


def test_non_utf8_bytes_delivered_with_replacement_and_reported(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "latin1"
    path = home.transcript(eid)
    path.write_bytes(b'{"type":"user","text":"caf\xe9"}\n{"type":"user","text":"ok"}\n')
    w = workers(home, eid, path)
    wait_until(lambda: len(backend.lines(eid, path.name)) == 2)
    assert backend.lines(eid, path.name)[0] == '{"type":"user","text":"caf\ufffd"}'
    wait_until(lambda: (r := w.last_report()) and "UTF-8" in r.last_error)
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE


def test_non_utf8_bytes_kept_exactly_in_archive(home, workers, tmp_path):
    eid = "latin1-archive"
    path = home.transcript(eid)
    path.write_bytes(b'{"type":"user","text":"caf\xe9"}\n')
    w = workers(home, eid, path)
    wait_until(lambda: (r := w.last_report()) and r.files.get(path.name) == 1)
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    export_session(str(home.archive), eid, str(tmp_path / "out"))
    assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


def test_empty_then_truncated_transcript(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "truncated"
    path = home.transcript(eid)
    path.write_bytes(b"")
    w = workers(home, eid, path)
    wait_until(lambda: (r := w.last_report()) and r.phase == "syncing", what="syncing an empty file")
    assert backend.lines(eid, path.name) == []
    path.write_bytes(b'{"n":1}\n{"n":2}\n{"n":3}\n')
    wait_until(lambda: len(backend.lines(eid, path.name)) == 3)
    # The file is truncated and rewritten (replaced): the worker trusts the server's count
    # and sends only lines past it, never re-sending or crashing.
    path.write_bytes(b'{"n":1}\n')
    with open(path, "ab") as f:
        f.write(b'{"n":2}\n{"n":3}\n{"n":4}\n')
    wait_until(lambda: len(backend.lines(eid, path.name)) == 4)
    assert backend.lines(eid, path.name)[-1] == '{"n":4}'
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE


def test_corrupt_state_and_torn_inbox_line(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "corrupt"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    home.sync_dir.mkdir(parents=True, mode=0o700)
    (home.sync_dir / f"{eid}.json").write_bytes(b'{"external_id": "corr')  # torn State
    (home.sync_dir / f"{eid}.inbox.jsonl").write_bytes(
        b'{"type":"session_end","timestamp":"2026-11-25T10:00:00Z","hook_input":{"session_id":"corrupt","reason":"exit"}}\n'
        b'{"type":"session_end","hook_in'  # torn by a crash
        b'\n{"type":"session_end","hook_input":{"session_id":"someone-else","reason":"exit"}}\n'
        b'{"type":"session_end","hook_input":{"reason":"no session id"}}\n'
    )
    w = workers(home, eid, path)
    # The inbox already says the session ended: the worker syncs everything and finishes.
    assert w.wait_exit() == api.EXIT_DONE
    assert backend.file_bytes(eid, path.name) == path.read_bytes()
    [event] = backend.events(eid)
    assert event["payload"] == {"session_id": "corrupt", "reason": "exit"}
    assert not (home.sync_dir / f"{eid}.json").exists()


def test_state_file_is_private_and_names_the_session(backend, home, workers):
    home.configure_backend(backend.url, backend.api_key)
    eid = "private"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    w = workers(home, eid, path, parent_pid=os.getpid())
    wait_until(lambda: delivered(backend, eid, path.name, path))
    state_path = home.sync_dir / f"{eid}.json"
    wait_until(lambda: state_path.exists() and decode_state(state_path).confab_session_id)
    state = decode_state(state_path)
    assert (state_path.stat().st_mode & 0o777) == 0o600
    assert (home.sync_dir.stat().st_mode & 0o777) == 0o700
    # pid: its live Claude Code (here this process), what the Go client's liveness test needs (go_compat.py)
    assert state.pid == os.getpid() and state.parent_pid == os.getpid()
    assert state.confab_session_id == backend.session_id(eid)
    assert state.files[path.name].last_synced_line == len(file_lines(path))
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE


def test_invalid_external_id_is_refused_before_any_file_is_written(home):
    from confabd.records import InvalidExternalId, validate_external_id

    for bad in ["", ".hidden", "../etc/passwd", "a/b", "x" * 129, "sp ace", "nul\0"]:
        with pytest.raises(InvalidExternalId, match="invalid session id"):
            home.store().state_path(bad)
    assert validate_external_id("473250f7-35b7-4652-9383-9c93788bab1f")
    assert not home.sync_dir.exists()


def test_missing_transcript_without_parent_gives_up(home, workers):
    eid = "never-written"
    w = workers(home, eid, home.transcript(eid), settings=home.settings(transcript_wait_s=0.3))
    assert w.wait_exit() == api.EXIT_DONE
    assert not (home.sync_dir / f"{eid}.json").exists()


def test_finish_with_backend_down_keeps_state_for_a_retry(home, workers):
    home.configure_backend("http://127.0.0.1:9", "cfb_" + "a" * 40)  # nothing listens on port 9
    eid = "backend-down"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    w = workers(home, eid, path, settings=home.settings(shutdown_timeout_ms=500))
    wait_until(lambda: (r := w.last_report()) and "cannot reach http://127.0.0.1:9 (connection refused)" in r.last_error)
    w.finish()
    assert w.wait_exit() == api.EXIT_UNFINISHED
    state = decode_state(home.sync_dir / f"{eid}.json")
    assert state.finishing and "final sync incomplete" in state.last_error


def test_session_end_in_the_inbox_finishes_without_a_finish_message(backend, home, workers):
    """The hook could not reach the master (or the message was lost): the worker reads its inbox."""
    home.configure_backend(backend.url, backend.api_key)
    eid = "inbox-only"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    w = workers(home, eid, path, parent_pid=os.getpid())
    wait_until(lambda: delivered(backend, eid, path.name, path))
    home.store().append_inbox(eid, InboxRecord(type="session_end", timestamp="2026-11-25T10:00:00Z",
                                               hook_input={"session_id": eid, "reason": "clear"}))
    assert w.wait_exit() == api.EXIT_DONE
    [event] = backend.events(eid)
    assert event["payload"] == {"session_id": eid, "reason": "clear"}


def test_escape_heavy_lines_never_exceed_the_body_limit(backend, home, workers):
    """Control bytes escape to six bytes each (\\u0001): the budget's estimate is beaten, the real
    body check refuses the chunk before sending, and smaller chunks deliver every line."""
    home.configure_backend(backend.url, backend.api_key)
    eid = "escape-heavy"
    path = home.transcript(eid)
    path.write_bytes(b"".join(b"%d:" % i + b"\x01" * (1 << 20) + b"\n" for i in range(10)))
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path.name, path), timeout=60)
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert backend.chunk_counts(eid)[path.name] >= 5  # no body over 16 MiB was ever sent
    assert 400 not in backend.counts()["by_status"]


def test_long_non_ascii_summary_is_cut_in_bytes_and_the_file_flows(backend, home, workers):
    """The server limits `summary` to 2,048 bytes of UTF-8: 1,500 'é' (3,000 bytes) would fail every chunk."""
    home.configure_backend(backend.url, backend.api_key)
    eid = "long-summary"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    summary = "é" * 1500
    with open(path, "ab") as f:
        f.write(b'{"type":"summary","summary":"' + summary.encode() + b'"}\n')
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path.name, path), what="all lines on the backend")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    sent = backend.metadata(eid)["summary"]
    assert sent == "é" * 1024 and len(sent.encode()) == 2048


def test_reload_carries_the_masters_new_settings_to_a_running_worker(home, workers, tmp_path):
    """SIGHUP reaches running workers: Reload carries the settings, used from the next cycle
    (here a new archive path, so the sink is rebuilt on it and the session goes there whole)."""
    eid = "reloaded"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    w = workers(home, eid, path)
    lines = len(file_lines(path))
    wait_until(lambda: w.last_report() and w.last_report().files.get(path.name) == lines,
               what="every line in the first archive")
    moved = tmp_path / "moved.sqlite3"
    w.conn.send_bytes(api.encode(api.Reload(home.settings(archive_path=str(moved)))))
    with open(path, "ab") as f:
        f.write(b'{"type":"user","message":"after the reload"}\n')
    wait_until(lambda: moved.exists() and w.last_report().files.get(path.name) == lines + 1,
               what="the whole session in the archive the new settings name")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    export_session(str(moved), eid, str(tmp_path / "out"))
    assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


def phases_from_finishing(w) -> list:
    phases = [r.phase for r in w.reports]
    return phases[phases.index(api.Phase.FINISHING):]


def test_a_worker_started_finishing_reports_finishing_from_its_first_report(backend, home, workers):
    """`status` showed "waiting" and "connecting" for a session the master had said was finishing."""
    home.configure_backend(backend.url, backend.api_key)
    eid = "born-finishing"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    w = workers(home, eid, path, finish_reason=api.STOP_REQUESTED)
    assert w.wait_exit() == api.EXIT_DONE
    assert [r.phase for r in w.reports] == [api.Phase.FINISHING, api.Phase.DONE]
    assert backend.events(eid)[0]["payload"]["confabd_reason"] == api.STOP_REQUESTED


def test_a_finishing_worker_never_goes_back_to_connecting(backend, home, workers):
    """Finish while the sink is being rebuilt (here: after a 401): the final sync builds a new one,
    and that used to report "connecting" for the rest of the finish."""
    eid = "finish-after-401"
    path = home.copy_fixture("hello-world-script.jsonl", eid)
    home.configure_backend(backend.url, "cfb_" + "x" * 40)  # wrong key: the engine is dropped each cycle
    w = workers(home, eid, path)
    wait_until(lambda: (r := w.last_report()) and "401" in r.last_error, what="401 reported")
    home.configure_backend(backend.url, backend.api_key)
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert backend.file_bytes(eid, path.name) == path.read_bytes()
    assert set(phases_from_finishing(w)) == {api.Phase.FINISHING, api.Phase.DONE}


def test_init_names_the_provider_and_the_richer_git_info(backend, home, workers, tmp_path):
    """As the newer confab client: provider "claude-code"; git_info with the last commit, dirtiness,
    remotes (credentials stripped) and the tracking remote."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=Ada", "-c", "user.email=ada@example.org"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "a.txt").write_text("a")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "first commit"], check=True)
    subprocess.run(git + ["remote", "add", "origin", "https://bob:s3cret@git.example.org/o/r.git"], check=True)
    subprocess.run(git + ["config", "branch.main.remote", "origin"], check=True)
    (repo / "a.txt").write_text("changed")  # dirty
    home.configure_backend(backend.url, backend.api_key)
    eid = "git-rich"
    path = home.transcript(eid)
    path.write_text('{"type":"user","cwd":"%s","message":{"content":"hi"}}\n' % repo)
    w = workers(home, eid, path)
    wait_until(lambda: delivered(backend, eid, path.name, path), what="the line on the backend")
    w.finish()
    assert w.wait_exit() == api.EXIT_DONE
    assert backend._session_snapshot(eid)["provider"] == "claude-code"
    info = backend.metadata(eid)["git_info"]
    sha = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert info == {"repo_url": "https://git.example.org/o/r.git", "branch": "main", "commit_sha": sha,
                    "commit_message": "first commit", "author": "Ada <ada@example.org>", "is_dirty": True,
                    "remotes": [{"name": "origin", "fetch_url": "https://git.example.org/o/r.git",
                                 "push_url": "https://git.example.org/o/r.git"}],
                    "tracking_remote": "origin"}
    assert "s3cret" not in str(backend.requests_log())
