"""confabctl login / logout against the test backend's device flow and key check, as the server does them."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess

import pytest

from confabd import login as login_module
from tests.conftest import PYTHON
from tests.fakebackend import FakeBackend


@pytest.fixture
def backend():
    with FakeBackend() as b:
        yield b


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


def ctl(home, *args, timeout=60):
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.Popen([PYTHON, "-m", "confabd.ctl", *args], env=env, cwd=str(home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def config_of(home):
    path = home / ".confab" / "config.json"
    return json.loads(path.read_text()), stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)


def test_login_with_a_checked_api_key_keeps_the_other_settings(backend, home):
    (home / ".confab").mkdir(mode=0o755)
    (home / ".confab" / "config.json").write_text('{"redaction": {"enabled": true}, "backend_url": "x"}')
    proc = ctl(home, "login", "--backend-url", backend.url, "--api-key", backend.api_key + "\n")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Logged in" in out and "confabctl install-hooks" in out and backend.api_key not in out + err
    config, mode, _ = config_of(home)
    assert config == {"redaction": {"enabled": True}, "backend_url": backend.url, "api_key": backend.api_key}
    assert mode == 0o600
    assert [e["endpoint"] for e in backend.requests_log()] == ["validate"]


def test_login_with_a_key_the_server_refuses_saves_nothing(backend, home):
    proc = ctl(home, "login", "--backend-url", backend.url, "--api-key", "cfb_" + "w" * 40)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "does not accept this API key" in err and "w" * 40 not in err
    assert not (home / ".confab" / "config.json").exists()


def test_login_refuses_plain_http_to_another_host(home):
    proc = ctl(home, "login", "--backend-url", "http://confab.example.org", "--api-key", "cfb_" + "k" * 40)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "https" in err
    proc = ctl(home, "login", "--api-key", "cfb_" + "k" * 40)  # nothing configured, no URL given
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "--backend-url" in err


def test_device_login_through_the_real_command(backend, home):
    """The person opens the URL and approves the code while confabctl polls (every 5 s at the least)."""
    proc = ctl(home, "login", "--backend-url", backend.url, "--name", "laptop")
    shown = []
    for line in proc.stdout:
        shown.append(line)
        if line.strip().startswith("and enter the code"):
            break
    code = shown[-1].split()[-1]
    assert any(f"{backend.url}/auth/device?code={code}" in line for line in shown), shown
    key = backend.approve_device(code, user="alice")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    config, mode, dir_mode = config_of(home)
    assert config == {"backend_url": backend.url, "api_key": key} and (mode, dir_mode) == (0o600, 0o700)
    assert key not in "".join(shown) + out + err  # the new key is never printed

    proc = ctl(home, "logout")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Logged out" in out
    assert config_of(home)[0] == {"backend_url": backend.url, "api_key": ""}
    proc = ctl(home, "logout")
    assert proc.communicate(timeout=60)[0].startswith("Already logged out")


def test_device_login_waits_while_pending_and_slows_down_when_told(backend, home):
    """In process, with the waits recorded instead of slept: interval 5 s, +5 s after slow_down."""
    waits = []
    out = io.StringIO()
    polls_before_approval = 2

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == polls_before_approval + 1:  # the person approves after two pending polls
            code = [l for l in out.getvalue().splitlines() if l.startswith("and enter the code")][0].split()[-1]
            backend.approve_device(code)

    backend.slow_down_next_polls(1)
    path = login_module.login(str(home), backend.url, out, sleep=sleep)
    assert waits == [5.0, 10.0, 10.0]  # slow_down, pending, then the key
    assert backend.device_polls() == 3
    assert json.loads(open(path).read())["api_key"].startswith("cfb_")
