"""packaging/install-user.sh, the README's first command: install, the PATH hint, and --uninstall."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def run(script_args, env, timeout=600):
    return subprocess.run(["sh", str(REPO / "packaging" / "install-user.sh"), *script_args], env=env,
                          cwd=env["HOME"], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def user_env(tmp_path):
    home, run_dir = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    run_dir.mkdir(mode=0o700)
    keep = {k: v for k, v in os.environ.items()
            if k in ("LANG", "LC_ALL", "PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")}
    return dict(keep, HOME=str(home), XDG_RUNTIME_DIR=str(run_dir), PATH="/usr/local/bin:/usr/bin:/bin",
                # downloads are shared with the developer's pip cache; the venv itself is new
                PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")))


def confab_hooks(settings: Path) -> list[str]:
    document = json.loads(settings.read_text()) if settings.exists() else {}
    return [hook["command"] for entries in document.get("hooks", {}).values()
            for entry in entries for hook in entry.get("hooks", []) if "confabctl" in hook["command"]]


def test_install_says_path_and_uninstall_removes_everything_but_the_data(user_env):
    home = Path(user_env["HOME"])
    bindir, venv = home / ".local" / "bin", home / ".local" / "share" / "confabd" / "venv"
    ctl = [str(bindir / "confabctl")]
    installed = run([], user_env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert f"{bindir} is not on PATH in this shell" in installed.stdout
    assert f'export PATH="{bindir}:$PATH"' in installed.stdout
    assert len(confab_hooks(home / ".claude" / "settings.json")) == 7  # start, prompt, end; 2 x pre, post-tool-use
    assert subprocess.run(ctl + ["ping"], env=user_env, capture_output=True).returncode == 0
    (home / ".confab" / "sync").mkdir(parents=True, exist_ok=True)
    (home / ".confab" / "config.json").write_text('{"backend_url": "", "api_key": ""}')

    on_path = dict(user_env, PATH=f"{bindir}:{user_env['PATH']}")
    again = run([], on_path)  # idempotent, restarts the master, no hint when bindir is on PATH
    assert again.returncode == 0, again.stdout + again.stderr
    assert "not on PATH" not in again.stdout
    assert len(confab_hooks(home / ".claude" / "settings.json")) == 7  # start, prompt, end; 2 x pre, post-tool-use

    removed = run(["--uninstall"], user_env)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert confab_hooks(home / ".claude" / "settings.json") == []
    assert not venv.exists() and not (bindir / "confabctl").exists() and not (bindir / "confabd").exists()
    socket = Path(user_env["XDG_RUNTIME_DIR"]) / "confabd" / "control.sock"
    wait_until(lambda: not socket.exists(), 30, what="the master to stop")
    assert (home / ".confab" / "config.json").exists() and (home / ".confab" / "sync").is_dir()
    assert "kept your data" in removed.stdout

    assert run(["--uninstall"], user_env).returncode == 0  # nothing left to remove: still fine
    assert run(["--bogus"], user_env).returncode == 2
