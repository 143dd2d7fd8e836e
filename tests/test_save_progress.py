"""`confabctl save`'s progress: one line on a real terminal (a pty), nothing but the summary on a pipe,
moving within a chunk, one overall line for several sessions, and Ctrl-C saying that running it again
resumes (exit 130), all against the real test backend."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading

import pytest

from confabd.progress import ProgressLine
from tests.fakebackend import FakeBackend
from tests.test_save import REPO, ctl, home  # noqa: F401  (the fixture)
from tests.waiting import wait_until

COLUMNS = 60


def big_transcript(path, size=3_500_000) -> bytes:
    """A transcript of several 1 MiB blocks that fits one chunk."""
    lines, total, n = [], 0, 0
    while total < size:
        line = json.dumps({"type": "user", "n": n, "message": {"content": "word " * 150}}).encode()
        lines.append(line)
        total += len(line) + 1
        n += 1
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(data)
    return data


class Terminal:
    """A pty COLUMNS wide whose output is collected by a thread."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
        self.shown = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.shown += data

    def text(self) -> bytes:
        with self._lock:
            return self.shown

    def close_slave(self):
        os.close(self.slave)

    def close(self):
        self._thread.join(timeout=30)
        os.close(self.master)


def renders(shown: bytes) -> list[str]:
    """Each state of the one line: the text between carriage returns, without the erase-line code."""
    return [part.replace(b"\x1b[K", b"").decode() for part in shown.split(b"\r") if part.replace(b"\x1b[K", b"")]


def popen_save(home, *args, stderr):
    environment = {"PATH": os.environ["PATH"], "HOME": str(home.path), "PYTHONPATH": str(REPO),
                   "CONFABD_SOCKET": str(home.path / "no-master.sock")}
    # SIGINT as a terminal gives it: a suite started in the background by a shell (`cmd &`) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler (the Ctrl-C test hung).
    return subprocess.Popen([sys.executable, "-m", "confabd.ctl", "save", *args], env=environment,
                            stdout=subprocess.PIPE, stderr=stderr, cwd=str(home.path),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_one_line_on_a_terminal_within_its_width_moving_within_a_chunk(home):  # noqa: F811
    path = home.transcript("progress-tty")
    data = big_transcript(path)
    terminal = Terminal()
    with FakeBackend() as backend:
        home.configure_backend(backend.url, backend.api_key)
        held = backend.gate("chunk")
        process = popen_save(home, str(path), stderr=terminal.slave)
        try:
            # the chunk is being sent and not yet answered: the line already shows what was read
            held.arrived.wait(60)
            wait_until(lambda: any(re.match(r"[1-9][0-9.]* of 3\.5 MB", r) for r in renders(terminal.text())),
                       what="a progress line with bytes read before the first chunk is answered")
            assert backend.lines("progress-tty", path.name) == []
            held.release()
            out, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        terminal.close_slave()
        terminal.close()
        assert process.returncode == 0
        assert backend.file_bytes("progress-tty", path.name) == data
    shown = terminal.text()
    assert b"\n" not in shown  # one line, redrawn in place
    states = renders(shown)
    assert len(states) >= 2 and all(len(s) < COLUMNS for s in states), states
    line_count = data.count(b"\n")
    assert "3.5 of 3.5 MB  100%" in states[-1] and f"{line_count:,} lines" in states[-1], states[-1]
    assert shown.endswith(b"\r\x1b[K")  # the line is taken away before the summary
    assert out.startswith(b"saved progress-tty: ")


def test_nothing_but_the_summary_on_a_pipe(home):  # noqa: F811
    path = home.transcript("progress-pipe")
    big_transcript(path, 1_500_000)
    with FakeBackend() as backend:
        home.configure_backend(backend.url, backend.api_key)
        result = ctl(home, "save", str(path))
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.count(b"\n") == 1 and result.stdout.startswith(b"saved progress-pipe: ")


def test_save_all_shows_one_overall_line(home):  # noqa: F811
    first, second = home.transcript("aaaa1111-all"), home.transcript("bbbb2222-all")
    big_transcript(first, 1_200_000)
    big_transcript(second, 1_300_000)
    terminal = Terminal()
    with FakeBackend() as backend:
        home.configure_backend(backend.url, backend.api_key)
        result = ctl(home, "save", "--all", stderr=terminal.slave)
    terminal.close_slave()
    terminal.close()
    assert result.returncode == 0, result.stdout
    states = renders(terminal.text())
    assert b"\n" not in terminal.text() and all(len(s) < COLUMNS for s in states), states
    assert any(s.startswith("[1/2] ") for s in states) and any(s.startswith("[2/2] ") for s in states), states
    assert any(s.startswith("[2/2] 2.5 of 2.5 MB  100%") for s in states), states  # one total over both
    out = result.stdout.decode()
    assert out.count("saved ") == 3 and "saved 2 of 2 sessions" in out and "[1/2]" not in out


def test_ctrl_c_during_an_upload_says_running_it_again_resumes(home):  # noqa: F811
    path = home.transcript("progress-int")
    data = big_transcript(path, 1_500_000)
    with FakeBackend() as backend:
        home.configure_backend(backend.url, backend.api_key)
        held = backend.gate("chunk")
        process = popen_save(home, str(path), stderr=subprocess.PIPE)
        try:
            assert held.arrived.wait(60), "the save never sent its chunk"
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130, err
        assert b"interrupted" in err and b"again resumes" in err and b"Traceback" not in err, err
        assert out == b""
        held.release()  # the held chunk may now be stored after all: running it again must not send it twice
        again = ctl(home, "save", str(path))
        assert again.returncode == 0, again.stderr
        assert backend.file_bytes("progress-int", path.name) == data


@pytest.mark.parametrize("width", [10, 30, 45, 80, 200])
def test_the_line_keeps_whole_fields_within_the_width(width):
    clock = iter([0.0, 2.0]).__next__
    line = ProgressLine(sys.stderr, 200_000_000, clock=clock)
    line.prefix = "[3/12] "
    line.session_bytes, line.lines, line.label = 50_000_000, 41230, "c7d3d95c-57f0-4359-8f4b-926a9bef5a3f.jsonl"
    text = line.render(width, now=2.0)
    assert len(text) <= width - 1
    full = "[3/12] 50.0 of 200.0 MB   25%  41,230 lines  25.0 MB/s  0:06 left  c7d3d95c-57f0-4359-8f4b-926a9bef5a3f.jsonl"
    assert full.startswith(text)
    if width >= 80:
        assert "0:06 left" in text
