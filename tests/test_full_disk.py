"""A full disk under the sync dir: nothing is lost, the user is told.

The sync dir is put on a tiny tmpfs (root only: CI runs as root), which is
then filled up. Lines keep flowing to the backend (State is only a cache of
the backend's position), status says why State cannot be written, and the
SessionEnd hook, unable to write its inbox record, hands the payload to the
master so the session_end event still carries it.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import backend_has_file, fixture_lines
from tests.waiting import wait_until


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(mount_point):
    """Write until the filesystem says ENOSPC (unbuffered: nothing left to flush)."""
    fd = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def append(path, lines):
    with open(path, "ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))


def test_full_disk_loses_nothing_and_says_why(cfd, small_disk):
    backend, eid = cfd.backend, "disk-full"
    cfd.sync_dir = small_disk / "sync"
    cfd.env["CONFABD_STATE_DIR"] = str(cfd.sync_dir)
    cfd.master()
    path, lines = cfd.transcript(eid), fixture_lines()
    append(path, lines[:5])
    r = cfd.hook("session-start", cfd.payload(eid))
    assert r.returncode == 0 and not r.stderr, r.stderr
    wait_until(lambda: cfd.state_file(eid).exists(), what="the State file")
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)

    fill(small_disk)
    append(path, lines[5:])  # State cannot record this progress: the backend still gets it
    backend.wait_for(lambda: backend_has_file(backend, eid, path), timeout=20)
    s = wait_until(lambda: (s := cfd.session(eid)) and "No space left" in (s["last_error"] or "") and s)
    assert "cannot write State" in s["last_error"]

    end = cfd.payload(eid, "SessionEnd", reason="prompt_input_exit")
    r = cfd.hook("session-end", end)
    assert r.returncode == 0 and '"continue": true' in r.stdout
    assert "cannot record the session end on disk" in r.stderr
    backend.wait_for(lambda: backend.events(eid), timeout=20)
    [event] = backend.events(eid)
    assert event["payload"] == end  # the real hook input, carried by the master instead of the inbox
    assert backend_has_file(backend, eid, path)
    wait_until(lambda: cfd.session(eid) is None and not cfd.state_file(eid).exists())
