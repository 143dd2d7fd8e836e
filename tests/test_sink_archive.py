"""ArchiveSink: the backend's rules on a local SQLite file, and the CLI over it.

The archive must keep the same exactly-once promises as the backend: chunks
are contiguous, a replay is refused, a killed writer leaves no gap, and an
export gives back the transcript byte for byte.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import selectors
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from tests.data import TRANSCRIPTS

from confabd.archive_cli import cmd_export, cmd_list
from confabd.records import ChunkMetadata, GitInfo, InitMetadata, InitRequest
from confabd.sinks.archive import ArchiveError, ArchiveSink, export_session, list_sessions
from confabd.sinks.base import Chunk, PositionMismatch, RequestRejected, SessionGone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = sorted(str(p) for p in TRANSCRIPTS.glob("*.jsonl"))
EID = "9f0e8d7c-aaaa-bbbb-cccc-ddddeeeeffff"
NAME = EID + ".jsonl"


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "share" / "confabd" / "archive.sqlite3")


@pytest.fixture
def sink(db):
    with ArchiveSink(db) as s:
        yield s


def init(sink, eid=EID):
    return sink.init(InitRequest(eid, f"/home/u/.claude/projects/p/{eid}.jsonl", InitMetadata(cwd="/home/u/p")))


def chunk(session_id, first_line, lines, name=NAME, file_type="transcript", metadata=None):
    return Chunk(session_id, name, file_type, first_line, lines, metadata)


def split_lines(data: bytes) -> list[bytes]:
    """A file's complete lines, without their newlines (as the engine sends them)."""
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def upload_file(sink, session_id, name, file_type, data, per_chunk=7):
    lines = split_lines(data)
    for start in range(0, len(lines), per_chunk):
        sink.upload_chunk(chunk(session_id, start + 1, lines[start:start + per_chunk], name, file_type))


def wait_until(predicate, timeout=30.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{predicate} not true within {timeout}s"
        time.sleep(interval)


# ---------------------------------------------------------------------------
# The backend's rules.


def test_round_trip_and_resume(db, sink):
    first = init(sink)
    assert first.files == {}
    meta = ChunkMetadata(git_info=GitInfo(branch="main"), summary="s1", first_user_message="hi")
    assert sink.upload_chunk(chunk(first.session_id, 1, [b"a", b"b"], metadata=meta)) == 2
    assert sink.upload_chunk(chunk(first.session_id, 3, [b"c"], metadata=ChunkMetadata(summary="s2"))) == 3
    assert sink.upload_chunk(chunk(first.session_id, 1, [b"x"], "agent-1.jsonl", "agent")) == 1
    sink.send_event(first.session_id, "session_end", "2026-11-24T10:00:00Z", {"reason": "exit"})

    with ArchiveSink(db) as reopened:
        again = init(reopened)
    assert again.session_id == first.session_id
    assert {n: f.last_synced_line for n, f in again.files.items()} == {NAME: 3, "agent-1.jsonl": 1}

    (listed,) = list_sessions(db)
    assert listed["external_id"] == EID and listed["session_id"] == first.session_id
    assert listed["ended"] is True
    assert listed["summary"] == "s2" and listed["first_user_message"] == "hi"  # latest non-empty values
    assert listed["files"] == {NAME: {"file_type": "transcript", "lines": 3},
                               "agent-1.jsonl": {"file_type": "agent", "lines": 1}}
    assert listed["created_at"] <= listed["updated_at"]


def test_chunks_must_be_contiguous_and_replays_are_refused(sink):
    session = init(sink)
    sink.upload_chunk(chunk(session.session_id, 1, [b"1", b"2"]))
    with pytest.raises(PositionMismatch) as gap:
        sink.upload_chunk(chunk(session.session_id, 4, [b"4"]))
    assert gap.value.expected_first_line == 3
    assert str(gap.value) == "first_line must be 3 (got 4) - chunks must be contiguous"
    with pytest.raises(PositionMismatch) as replay:
        sink.upload_chunk(chunk(session.session_id, 2, [b"2", b"3"]))
    assert replay.value.expected_first_line == 3
    with pytest.raises(PositionMismatch) as new_file:
        sink.upload_chunk(chunk(session.session_id, 2, [b"x"], "agent-2.jsonl", "agent"))
    assert new_file.value.expected_first_line == 1
    assert set(init(sink).files) == {NAME}  # the refused chunk left no empty file behind


@pytest.mark.parametrize("bad", [
    dict(first_line=0), dict(lines=[]), dict(file_type="todo"), dict(name="../x.jsonl"),
    dict(lines=[b"a\nb"]), dict(metadata=ChunkMetadata(summary="s" * 2049)),
    dict(metadata=ChunkMetadata(summary="é" * 1025)),  # 2,050 bytes: the limit is in bytes
])
def test_requests_the_backend_would_refuse(sink, bad):
    session = init(sink)
    args = dict(first_line=1, lines=[b"a"], name=NAME, file_type="transcript", metadata=None)
    args.update(bad)
    with pytest.raises(RequestRejected):
        sink.upload_chunk(chunk(session.session_id, **args))


def test_unknown_session_and_unknown_event(sink):
    with pytest.raises(SessionGone):
        sink.upload_chunk(chunk("no-such-session", 1, [b"a"]))
    with pytest.raises(SessionGone):
        sink.send_event("no-such-session", "session_end", "2026-11-24T10:00:00Z", {})
    session = init(sink)
    with pytest.raises(RequestRejected):
        sink.send_event(session.session_id, "session_start", "2026-11-24T10:00:00Z", {})


def test_init_requires_ids(sink):
    with pytest.raises(RequestRejected):
        sink.init(InitRequest("", "/t.jsonl"))
    with pytest.raises(RequestRejected):
        sink.init(InitRequest(EID, ""))


# ---------------------------------------------------------------------------
# Files on disk.


def test_private_file_modes(db, sink):
    session = init(sink)
    sink.upload_chunk(chunk(session.session_id, 1, [b"secret"]))
    assert stat.S_IMODE(os.stat(os.path.dirname(db)).st_mode) == 0o700
    for path in glob.glob(db + "*"):  # the database and its -wal/-shm files
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_is_refused(db, sink):
    sink.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ArchiveError, match="newer"):
        ArchiveSink(db)


def test_export_is_byte_for_byte(tmp_path, db, sink):
    assert FIXTURES, "fixtures missing"
    main = open(FIXTURES[0], "rb").read() + b'{"bad":"\xff\xfe\xc3"}\r\n\n{"last":true}\n'
    agent = open(FIXTURES[-1], "rb").read()
    session = init(sink)
    upload_file(sink, session.session_id, NAME, "transcript", main)
    upload_file(sink, session.session_id, "agent-a1b2c3d4.jsonl", "agent", agent, per_chunk=50)

    written = export_session(db, EID, str(tmp_path / "out"))
    assert sorted(os.path.basename(p) for p in written) == sorted([NAME, "agent-a1b2c3d4.jsonl"])
    assert open(tmp_path / "out" / NAME, "rb").read() == main
    assert open(tmp_path / "out" / "agent-a1b2c3d4.jsonl", "rb").read() == agent


@pytest.mark.parametrize("fixture", FIXTURES, ids=os.path.basename)
def test_every_fixture_round_trips(tmp_path, db, sink, fixture):
    data = open(fixture, "rb").read()
    session = init(sink)
    upload_file(sink, session.session_id, NAME, "transcript", data, per_chunk=13)
    export_session(db, EID, str(tmp_path / "out"))
    assert open(tmp_path / "out" / NAME, "rb").read() == data


def test_export_unknown_id_is_a_lookup_error(db, sink, tmp_path):
    init(sink)
    with pytest.raises(LookupError, match="not in the archive"):
        export_session(db, "nope", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# The CLI.


def test_cmd_list_json_and_table(db, sink, capsys):
    session = init(sink)
    sink.upload_chunk(chunk(session.session_id, 1, [b"a", b"b"], metadata=ChunkMetadata(first_user_message="fix it")))
    assert cmd_list(db, as_json=True) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["archive"] == db
    assert [s["external_id"] for s in document["sessions"]] == [EID]
    assert document["sessions"][0]["files"][NAME] == {"file_type": "transcript", "lines": 2}

    assert cmd_list(db, as_json=False) == 0
    table = capsys.readouterr().out
    assert EID in table and "fix it" in table and "LINES" in table


def test_cmd_list_without_an_archive(tmp_path, capsys):
    missing = str(tmp_path / "none.sqlite3")
    assert cmd_list(missing, as_json=True) == 0
    assert json.loads(capsys.readouterr().out) == {"archive": missing, "sessions": []}
    assert not os.path.exists(missing)


def test_cmd_export(db, sink, tmp_path, capsys):
    session = init(sink)
    sink.upload_chunk(chunk(session.session_id, 1, [b"a"]))
    out_dir = str(tmp_path / "exported")
    assert cmd_export(db, EID, out_dir) == 0
    assert capsys.readouterr().out.splitlines() == [os.path.join(out_dir, NAME)]
    assert open(os.path.join(out_dir, NAME), "rb").read() == b"a\n"


def test_cmd_export_default_dir(db, sink, tmp_path, monkeypatch):
    session = init(sink)
    sink.upload_chunk(chunk(session.session_id, 1, [b"a"]))
    monkeypatch.chdir(tmp_path)
    assert cmd_export(db, EID, None) == 0
    assert (tmp_path / EID / NAME).read_bytes() == b"a\n"


def test_cmd_export_unknown_id(db, sink, tmp_path, capsys):
    init(sink)
    assert cmd_export(db, "no-such-id", str(tmp_path / "out")) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no-such-id" in captured.err and "not in the archive" in captured.err


# ---------------------------------------------------------------------------
# Many writers, and writers killed mid-chunk.


def _write_session(db: str, eid: str, chunks: int, lines_per_chunk: int, start) -> None:
    """Child process: one session, many chunks (the one-worker-per-session model)."""
    start.wait()
    with ArchiveSink(db) as sink:
        session = init(sink, eid)
        for n in range(chunks):
            first = n * lines_per_chunk + 1
            lines = [b'{"eid":"%s","n":%d}' % (eid.encode(), first + i) for i in range(lines_per_chunk)]
            assert sink.upload_chunk(chunk(session.session_id, first, lines, eid + ".jsonl")) == first + lines_per_chunk - 1


def test_concurrent_writers_in_several_processes(db):
    # No archive yet: the writers also race to create the file, WAL mode and the schema.
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    workers = [context.Process(target=_write_session, args=(db, f"session-{i}", 60, 50, start)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * 4
    lines = {s["external_id"]: s["files"][s["external_id"] + ".jsonl"]["lines"] for s in list_sessions(db)}
    assert lines == {f"session-{i}": 3000 for i in range(4)}
    assert_consistent(db)


KILL_SCRIPT = """
import sys
from confabd.records import InitRequest
from confabd.sinks.archive import ArchiveSink
from confabd.sinks.base import Chunk

sink = ArchiveSink(sys.argv[1])
session = sink.init(InitRequest("victim", "/t/victim.jsonl"))
line = b'{"type":"assistant","text":"' + b"z" * 1000 + b'"}'
held = session.files["victim.jsonl"].last_synced_line if "victim.jsonl" in session.files else 0
while True:
    print("begin", held + 1, flush=True)
    held = sink.upload_chunk(Chunk(session.session_id, "victim.jsonl", "transcript", held + 1, [line] * 5000))
"""


def _read_line(proc, timeout):
    """One stdout line of `proc`, waiting at most `timeout` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), "writer printed nothing in time"
    return proc.stdout.readline()


def test_kill_9_mid_chunk_leaves_no_gap(db):
    env = dict(os.environ, PYTHONPATH=REPO)
    for round_no in range(3):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, db], stdout=subprocess.PIPE, env=env)
        try:
            for _ in range(3):  # let two chunks commit, then kill inside the third
                assert _read_line(proc, 60).startswith(b"begin")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        held = assert_consistent(db)["victim.jsonl"]
        assert held >= 10000 * (round_no + 1) and held % 5000 == 0


def assert_consistent(db) -> dict[str, int]:
    """Every file holds exactly lines 1..last_synced_line; returns name -> last line."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(
            "SELECT f.file_name, f.last_synced_line, COUNT(l.line_no), MIN(l.line_no), MAX(l.line_no)"
            " FROM files f LEFT JOIN lines l ON l.file = f.id GROUP BY f.id"
        ).fetchall()
    finally:
        conn.close()
    for name, last, count, low, high in rows:
        assert (count, low, high) == (last, 1, last), name
    return {name: last for name, last, *_ in rows}


# ---------------------------------------------------------------------------
# The provider of each session, and the migration of archives from before providers.

V1_SCHEMA = __import__("confabd.sinks.archive", fromlist=["SCHEMA"]).SCHEMA.replace(
    "    provider           TEXT NOT NULL DEFAULT 'claude-code',\n", "")


def make_v1_archive(db):
    """An archive as confabd wrote it before providers (schema 1), with one session of 2 lines."""
    assert "provider" not in V1_SCHEMA
    os.makedirs(os.path.dirname(db), mode=0o700)
    conn = sqlite3.connect(db)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO sessions (session_id, external_id, transcript_path, created_at, updated_at)"
                 " VALUES ('s-1', ?, '/home/u/.claude/projects/p/x.jsonl', '2026-01-01T00:00:00Z',"
                 " '2026-01-01T00:00:00Z')", (EID,))
    conn.execute("INSERT INTO files (session, file_name, file_type, last_synced_line) VALUES (1, ?, 'transcript', 2)",
                 (NAME,))
    conn.executemany("INSERT INTO lines (file, line_no, data) VALUES (1, ?, ?)", [(1, b"a"), (2, b"b")])
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_an_archive_from_before_providers_is_migrated_and_its_sessions_are_claude_codes(tmp_path, db):
    make_v1_archive(db)
    home = tmp_path / "home"
    settings = home / ".config" / "confabd" / "confabd.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text(f'archive_path = "{db}"\n')
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "confabd.ctl", "archive", "list", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (listed,) = json.loads(r.stdout)["sessions"]
    assert listed["external_id"] == EID and listed["provider"] == "claude-code"
    assert listed["files"] == {NAME: {"file_type": "transcript", "lines": 2}}
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 2
    table = subprocess.run([sys.executable, "-m", "confabd.ctl", "archive", "list"], env=env,
                           capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert table[0].split()[:4] == ["EXTERNAL", "ID", "AGENT", "FILES"]
    assert table[1].split()[:2] == [EID, "claude-code"]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "confabd.ctl", "archive", "export", EID, "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (out / NAME).read_bytes() == b"a\nb\n"  # the old lines, untouched by the migration


def test_each_session_keeps_its_agent_and_an_id_is_never_two_agents(db, sink):
    codex_id = "019a0000-1111-7222-8333-444455556666"
    session = sink.init(InitRequest(codex_id, f"/h/.codex/sessions/2026/12/01/rollout-x-{codex_id}.jsonl",
                                    InitMetadata(cwd="/h/p"), provider="codex"))
    sink.upload_chunk(chunk(session.session_id, 1, [b"x"], f"rollout-x-{codex_id}.jsonl"))
    init(sink)  # a Claude Code session beside it
    assert {s["external_id"]: s["provider"] for s in list_sessions(db)} == {codex_id: "codex", EID: "claude-code"}
    with pytest.raises(RequestRejected, match="archived as a codex session, not cursor"):
        sink.init(InitRequest(codex_id, "/h/.cursor/x.jsonl", InitMetadata(cwd="/h/p"), provider="cursor"))
    assert sink.init(InitRequest(codex_id, f"/h/.codex/sessions/2026/12/01/rollout-x-{codex_id}.jsonl",
                                 InitMetadata(cwd="/h/p"), provider="codex")).session_id == session.session_id
