"""Attacks on confabd, each through real processes: a hostile backend on 127.0.0.1
(tests/hostile_backend.py), real workers, real `confabctl save`, a real master and
hook. docs/SECURITY.md names the actor and the defence each test shows.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from confabd import client, control
from confabd.config import check_backend_url
from confabd.errors import ConfigError
from confabd.worker_api import EXIT_UNFINISHED
from tests.conftest import PYTHON, REPO, Confabd, backend_has_file, fixture_lines
from tests.hostile_backend import HostileBackend, drip, gzip_bomb, huge_body
from tests.test_save import ctl
from tests.waiting import wait_until
from tests.workers import TRANSCRIPTS, Home, WorkerProcess

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot really a key, but the user's\n"
MiB = 1 << 20


from tests.test_save import home  # noqa: E402,F401 - the same throwaway HOME with an archive

@pytest.fixture
def hostile():
    with HostileBackend() as backend:
        yield backend


def plant_secrets(home: Home) -> list[str]:
    """Files the user can read that must never leave the machine, and the names that would reach them."""
    ssh = home.path / ".ssh"
    ssh.mkdir()
    key = ssh / "id_ed25519"
    key.write_bytes(SECRET)
    # from the project dir (~/.claude/projects/-home-dev-proj) and from its subagents/ dir
    return [str(key), "/etc/passwd", "../../../.ssh/id_ed25519", "../../../../.ssh/id_ed25519",
            "subagents/../../../../.ssh/id_ed25519", "agent-abcdef/../../../../.ssh/id_ed25519"]


def assert_nothing_stolen(backend: HostileBackend, eid: str, transcript: Path) -> None:
    assert backend.stolen == {}
    assert set(backend.chunk_file_names) == {transcript.name}
    assert backend_has_file(backend, eid, transcript)


# -- 1. file names from the backend --------------------------------------------------


def test_backend_named_paths_are_not_uploaded_by_a_worker(home, hostile):
    eid = "steal-by-worker"
    transcript = home.copy_fixture("hello-world-script.jsonl", eid)
    hostile.name_files(*plant_secrets(home))
    home.configure_backend(hostile.url, hostile.api_key)
    worker = WorkerProcess(home, eid, transcript)
    try:
        hostile.wait_for(lambda: backend_has_file(hostile, eid, transcript))
        worker.finish()
        worker.wait_exit()  # the final sync went over every file it tracks
    finally:
        worker.close()
    assert_nothing_stolen(hostile, eid, transcript)


def test_backend_named_paths_and_symlinks_are_not_uploaded_by_save(home, hostile):
    eid = "steal-by-save"
    transcript = home.copy_fixture("hello-world-script.jsonl", eid)
    names = plant_secrets(home)
    # A symlink named like an agent file, in the session's subagents/ dir, and one
    # in the project dir that the backend names: neither is followed.
    subagents = home.project / eid / "subagents"
    subagents.mkdir(parents=True)
    (subagents / "agent-symlinked1.jsonl").symlink_to(home.path / ".ssh" / "id_ed25519")
    (home.project / "agent-symlinked2.jsonl").symlink_to(home.path / ".ssh" / "id_ed25519")
    hostile.name_files(*names, "agent-symlinked2.jsonl")
    home.configure_backend(hostile.url, hostile.api_key)
    result = ctl(home, "save", str(transcript))
    assert result.returncode == 0, result.stderr
    assert_nothing_stolen(hostile, eid, transcript)


# -- 2, 3. redaction of metadata; the keys the server makes ---------------------------


def test_titles_and_summaries_are_redacted_like_lines(home, hostile):
    eid = "redacted-title"
    transcript = home.transcript(eid)
    token, key = "ghp_" + "T" * 36, "cfb_" + secrets.token_urlsafe(30)
    transcript.write_text(
        json.dumps({"type": "user", "cwd": str(home.path), "message": {"content": f"use {token} to push"}}) + "\n"
        + json.dumps({"type": "summary", "summary": f"set up the key {key}"}) + "\n")
    home.configure_backend(hostile.url, hostile.api_key, redaction={"enabled": True})
    result = ctl(home, "save", str(transcript))
    assert result.returncode == 0, result.stderr
    metadata = hostile.metadata(eid)
    assert metadata["first_user_message"] == "use [REDACTED:GITHUB_TOKEN] to push"
    assert metadata["summary"] == "set up the key [REDACTED:CONFAB_KEY]"
    assert token not in json.dumps(metadata) and key not in json.dumps(metadata)


def test_every_generated_confab_key_and_bearer_token_is_redacted(home, hostile):
    eid = "many-keys"
    transcript = home.transcript(eid)
    keys = ["cfb_" + secrets.token_urlsafe(30) for _ in range(2000)]  # as the server makes them
    tokens = [secrets.token_urlsafe(32) for _ in range(200)]
    lines = [json.dumps({"type": "user", "message": {"content": f"export CONFAB_API_KEY={k}"}}) for k in keys]
    lines += [json.dumps({"type": "assistant", "text": f"curl -H 'Authorization: Bearer {t}'"}) for t in tokens]
    transcript.write_text("\n".join(lines) + "\n")
    home.configure_backend(hostile.url, hostile.api_key, redaction={"enabled": True})
    result = ctl(home, "save", str(transcript))
    assert result.returncode == 0, result.stderr
    sent = "\n".join(hostile.lines(eid, transcript.name))
    leaked = [k for k in keys if k in sent] + [t for t in tokens if t in sent]
    assert leaked == [], f"{len(leaked)} of {len(keys) + len(tokens)} secrets were sent"
    assert sent.count("[REDACTED:CONFAB_KEY]") == 2000 and sent.count("[REDACTED:BEARER_TOKEN]") == 200


# -- 4. backend_url; proxies --------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://10.99.0.1:8080\\@127.0.0.1/",  # urlsplit: 127.0.0.1; urllib3 connects to 10.99.0.1
    "http://user:pw@127.0.0.1:8080/",
    "http://127.0.0.1:8080?x=@10.0.0.1",
    "http://127.0.0.1%2f@10.0.0.1/",
    "http://127.0.0.1 /",
    "http://127.0.0.1/\r\nHost: x",
    "http://0x7f.0.0.1/", "http://127.1/", "http://2130706433/",  # loopback to some parsers only
    "ftp://127.0.0.1/", "https://",
])
def test_odd_backend_urls_are_refused(url):
    with pytest.raises(ConfigError) as info:
        check_backend_url(url)
    assert "pw" not in str(info.value) and "\r" not in str(info.value)


def test_save_refuses_a_url_whose_real_host_is_not_loopback(home):
    """Refused before any connection (the real host here, if tried, could not even be resolved)."""
    transcript = home.copy_fixture("hello-world-script.jsonl", "odd-url")
    key = "cfb_" + secrets.token_urlsafe(30)
    home.configure_backend("http://nohost.invalid:8080\\@127.0.0.1/", key)
    result = ctl(home, "save", str(transcript))
    assert result.returncode == 1
    assert b"is not a plain http(s) URL" in result.stderr and key.encode() not in result.stderr


class ListeningProxy:
    """A TCP listener on 127.0.0.1 that counts who connects to it (and answers nothing)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_loopback_backend_is_never_reached_through_a_proxy(home, hostile):
    transcript = home.copy_fixture("hello-world-script.jsonl", "proxied")
    home.configure_backend(hostile.url, hostile.api_key)
    proxy = ListeningProxy()
    try:
        result = ctl(home, "save", str(transcript), http_proxy=proxy.url, HTTP_PROXY=proxy.url,
                     all_proxy=proxy.url, ALL_PROXY=proxy.url)
    finally:
        proxy.close()
    assert proxy.connections == 0
    assert result.returncode == 0, result.stderr
    assert backend_has_file(hostile, "proxied", transcript)


# -- 5. an API key with a newline ----------------------------------------------------------------


def test_api_key_with_trailing_newline_neither_crashes_a_worker_nor_is_logged(home, hostile, capfd):
    eid = "key-with-newline"
    transcript = home.copy_fixture("hello-world-script.jsonl", eid)
    home.configure_backend(hostile.url, hostile.api_key + "\n")  # as an editor may save it
    worker = WorkerProcess(home, eid, transcript)
    try:
        hostile.wait_for(lambda: backend_has_file(hostile, eid, transcript), timeout=30)
        assert worker.process.is_alive()
        worker.finish()
        assert worker.wait_exit() == 0
    finally:
        worker.close()
    out, err = capfd.readouterr()
    assert hostile.api_key not in out + err
    assert all(hostile.api_key not in (r.last_error or "") for r in worker.reports)


@pytest.mark.parametrize("bad_key", ["cfb_one\r\nX-Injected: 1", "cfb_two with a space"])
def test_api_key_that_cannot_be_a_header_is_refused_without_showing_it(home, hostile, bad_key):
    transcript = home.copy_fixture("hello-world-script.jsonl", "bad-key")
    home.configure_backend(hostile.url, bad_key)
    result = ctl(home, "save", str(transcript))
    assert result.returncode == 1
    assert b"api_key (~/.confab/config.json or CONFAB_API_KEY) contains a space or a control character" in result.stderr
    assert b"cfb_one" not in result.stderr and b"cfb_two" not in result.stderr
    save_with_newline = ctl(home, "save", str(transcript), CONFAB_API_KEY=hostile.api_key + "\n",
                            CONFAB_BACKEND_URL=hostile.url)
    assert save_with_newline.returncode == 0, save_with_newline.stderr
    assert hostile.api_key.encode() not in save_with_newline.stdout + save_with_newline.stderr


# -- 6. git's environment ------------------------------------------------------------------------


def test_git_gets_neither_the_api_key_nor_the_daemons_environment(home, hostile, tmp_path):
    eid = "git-env"
    transcript = home.copy_fixture("hello-world-script.jsonl", eid)
    dumps = tmp_path / "git-env"
    dumps.mkdir()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    git = fake_bin / "git"
    git.write_text(f"#!/bin/sh\nenv > {dumps}/$$\nexit 1\n")
    git.chmod(0o755)
    project = tmp_path / "project"
    project.mkdir()
    home.configure_backend(hostile.url, "")
    env = {"CONFAB_API_KEY": hostile.api_key, "CONFAB_BACKEND_URL": hostile.url,
           "DAEMON_ONLY_SECRET": "s3cr3t-of-the-daemon", "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    worker = WorkerProcess(home, eid, transcript, env=env, cwd=str(project))
    try:
        hostile.wait_for(lambda: backend_has_file(hostile, eid, transcript))
    finally:
        worker.close()
    seen = [p.read_text() for p in dumps.iterdir()]
    assert seen, "git was never run"
    for environment in seen:
        assert hostile.api_key not in environment and "s3cr3t-of-the-daemon" not in environment
        assert "CONFAB" not in environment and "GIT_TERMINAL_PROMPT=0" in environment


# -- 7. code from the project directory -------------------------------------------------------


def plant_package(directory: Path, marker: Path) -> None:
    package = directory / "confabd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('planted code ran')\n")
    (package / "ctl.py").write_text(f"open({str(marker)!r}, 'w').write('planted code ran')\n")


@pytest.fixture
def cfd_hostile(tmp_path, hostile):
    installation = Confabd(tmp_path, hostile)
    yield installation
    installation.close()


def test_auto_start_runs_no_code_from_the_project_dir(cfd_hostile, tmp_path):
    cfd = cfd_hostile
    project, marker = tmp_path / "evil-project", tmp_path / "MARKER"
    plant_package(project, marker)
    eid = "planted"
    cfd.transcript(eid).write_bytes(b"".join(fixture_lines()))
    assert cfd.ctl("ping").returncode == 3
    # The hook as the installed confabd runs it (-P: its own directory is not put first);
    # Claude Code runs hooks in the project dir.
    hook = subprocess.run([PYTHON, "-P", "-m", "confabd.ctl", "hook", "session-start"], cwd=project, env=cfd.env,
                          input=json.dumps(cfd.payload(eid)), capture_output=True, text=True, timeout=60)
    try:
        assert not marker.exists(), "the master ran code from the project dir"
        assert hook.returncode == 0 and hook.stderr == "", hook.stderr
        wait_until(lambda: backend_has_file(cfd.backend, eid, cfd.transcript(eid)), what="the session to sync")
        # ~/.confab, made by the master on its way up, is private
        assert stat.S_IMODE((cfd.home / ".confab").stat().st_mode) == 0o700
    finally:
        status = cfd.ctl("status", "--json")
        if status.returncode == 0:
            pid = json.loads(status.stdout)["master"]["pid"]
            cfd.ctl("shutdown")
            wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)


def test_installed_hook_command_runs_no_code_from_the_project_dir(tmp_path):
    project, marker = tmp_path / "evil-project", tmp_path / "MARKER"
    plant_package(project, marker)
    settings = tmp_path / "settings.json"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    install = subprocess.run([PYTHON, "-m", "confabd.ctl", "install-hooks", "--settings", str(settings)],
                             env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert install.returncode == 0, install.stderr
    hooks = json.loads(settings.read_text())["hooks"]
    command = hooks["SessionStart"][0]["hooks"][0]["command"]
    # Run as Claude Code would: in the project dir, by the shell. Invalid input: it must
    # only get as far as parsing it, with the installed confabd.
    result = subprocess.run(["/bin/sh", "-c", command], cwd=project, env=env, input="{not json",
                            capture_output=True, text=True, timeout=60)
    assert not marker.exists(), "the hook ran code from the project dir"
    assert result.returncode == 0 and "not valid JSON" in result.stderr
    assert " -I -m confabd.ctl" in command


# -- 12. escape sequences and forged log lines ---------------------------------------------------


def test_status_shows_a_backends_error_text_without_its_escape_sequences(cfd_hostile):
    cfd = cfd_hostile
    cfd.backend.fail_next(10_000, 500, message="\x1b]0;owned\x07\x1b[2Jscreen cleared\r\nforged")
    cfd.master()
    eid = "escapes"
    cfd.transcript(eid).write_bytes(b"".join(fixture_lines()))
    assert cfd.hook("session-start", cfd.payload(eid)).returncode == 0
    wait_until(lambda: "owned" in (cfd.session(eid) or {}).get("last_error", ""), what="the error in status")
    shown = cfd.ctl("status").stdout
    assert "owned" in shown and "screen cleared" in shown
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert "\\x1b]0;owned\\x07" in shown  # visible, not obeyed


def test_a_newline_in_a_transcript_path_cannot_forge_a_log_line(cfd_hostile):
    cfd = cfd_hostile
    master = cfd.master()
    eid = "forger"
    transcript = cfd.project / "x\nFORGED CRITICAL confabd: all your sessions were deleted\n.jsonl"
    transcript.write_bytes(b"".join(fixture_lines()))
    payload = {**cfd.payload(eid), "transcript_path": str(transcript)}
    assert cfd.hook("session-start", payload).returncode == 0
    cfd.backend.wait_for(lambda: cfd.backend.file_bytes(eid, transcript.name) == transcript.read_bytes())
    wait_until(lambda: "FORGED" in master.log_text(), what="the path in the log")
    assert not [line for line in master.log_text().splitlines() if line.startswith("FORGED")]


def test_printable_and_the_log_formatter():
    from confabd.text import SafeFormatter, printable

    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert printable("a\x1b[31mb\nc\u202ed\x00") == "a\\x1b[31mb\\x0ac\\u202ed\\x00"
    import logging

    record = logging.LogRecord("confabd", logging.INFO, __file__, 1, "path %s", ("a\nFORGED",), None)
    assert SafeFormatter("%(levelname)s %(message)s").format(record) == "INFO path a\\x0aFORGED"


# -- 13, 14. answers without bounds -----------------------------------------------------------


def save_measured(home: Home, transcript: Path) -> tuple[subprocess.CompletedProcess, int]:
    """`confabctl save` run under a small parent that reports the child's peak RSS (KiB)."""
    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:])\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
               "sys.exit(r.returncode)\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home.path), "PYTHONPATH": str(REPO),
           "CONFABD_SOCKET": str(home.path / "no-master.sock")}
    result = subprocess.run([PYTHON, "-c", wrapper, PYTHON, "-m", "confabd.ctl", "save", str(transcript)],
                            env=env, capture_output=True, timeout=300, cwd=str(home.path))
    return result, int(result.stderr.split()[-1])


@pytest.mark.parametrize("attack", ["huge body", "gzip bomb"])
def test_an_unbounded_answer_is_cut_off(home, hostile, attack):
    eid = "bomb"
    transcript = home.copy_fixture("hello-world-script.jsonl", eid)
    home.configure_backend(hostile.url, hostile.api_key)
    size = 300 * MiB
    hostile.attack("init", huge_body(size) if attack == "huge body" else gzip_bomb(size), times=1)
    result, peak_kib = save_measured(home, transcript)
    assert result.returncode == 0, result.stderr  # the next init was answered properly
    assert backend_has_file(hostile, eid, transcript)
    assert hostile.attacks_started == 1
    assert hostile.sent < 64 * MiB  # the client hung up long before the end
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib} KiB"
    print(f"{attack}: peak RSS of save {peak_kib >> 10} MiB; the server wrote {hostile.sent >> 10} KiB")


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_dripping_backend_cannot_hold_a_finishing_worker(home, hostile, where):
    eid = "drip"
    transcript = home.copy_fixture("hello-world-script.jsonl", eid)
    home.configure_backend(hostile.url, hostile.api_key)
    hostile.attack("init", drip(0.2, where))  # every init, forever
    settings = home.settings(http_timeout_s=1, shutdown_timeout_ms=2000)
    worker = WorkerProcess(home, eid, transcript, settings=settings)
    try:
        wait_until(lambda: hostile.attacks_started >= 1, what="the first dripped answer")
        started = time.monotonic()
        worker.finish()
        # Unbounded before: the read timeout (1 s) restarted with every byte (each 0.2 s).
        assert worker.wait_exit(timeout=60) == EXIT_UNFINISHED
        print(f"finished {time.monotonic() - started:.1f} s after Finish (shutdown timeout 2 s, request 1 s)")
    finally:
        worker.close()


def test_an_enclosing_deadline_cuts_a_request_shorter(hostile):
    """What a worker's final sync can use to end every request by its own deadline."""
    from confabd.records import InitRequest, InitMetadata
    from confabd.sinks import _deadline_sockets
    from confabd.sinks.base import Unavailable
    from confabd.sinks.http import HttpSink

    hostile.attack("init", drip(0.1))
    with HttpSink(hostile.url, hostile.api_key, timeout=600) as sink:
        started = time.monotonic()
        with _deadline_sockets.deadline(started + 1.0), pytest.raises(Unavailable):
            sink.init(InitRequest(external_id="cut-short", transcript_path="/x.jsonl", metadata=InitMetadata()))
        assert time.monotonic() - started < 60  # not the request's own 600 s


# -- smaller: the control protocol's reply size -------------------------------------------------


def test_client_accepts_a_status_reply_over_a_mebibyte(tmp_path):
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    files = {f"agent-{i:012d}.jsonl": {"last_synced_line": i} for i in range(40_000)}
    reply = json.dumps({"ok": True, "error": None, "sessions": [{"files": files}]}).encode()
    assert len(reply) > 1 << 20

    def answer():
        conn, _ = server.accept()
        with conn:
            size = int.from_bytes(conn.recv(4), "big")
            while size:
                size -= len(conn.recv(size))
            conn.sendall(len(reply).to_bytes(4, "big") + reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        got = client.request(path, {"type": "status"}, timeout=30)
    finally:
        thread.join(10)
        server.close()
    assert len(got["sessions"][0]["files"]) == 40_000
    assert client.MAX_REPLY_FRAME == control.MAX_REPLY_FRAME > control.MAX_FRAME
