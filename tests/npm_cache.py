"""The real coding agents for end-to-end tests, installed from npm once per machine into tests/.cache/
(gitignored): Claude Code, Codex and OpenCode all come through `install`.

An agent that cannot be installed (no npm, no registry) skips its tests with the reason, and fails them
under CI=true: CI must run them.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parent / ".cache"
INSTALL_TIMEOUT_S = 900


def unavailable(what: str, why: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the real {what} is required under CI: {why}")
    pytest.skip(why)


def install(package: str, version: str, command: str, what: str, cache_as: str, env: dict | None = None) -> Path:
    """`command` of npm `package`@`version`, installed into tests/.cache/<cache_as>-<version>/ on first
    use; `env` is added to its `--version` check (e.g. what keeps Claude Code from updating itself)."""
    prefix = CACHE / f"{cache_as}-{version}"
    binary = prefix / "node_modules" / ".bin" / command
    if works(binary, version, env):
        return binary
    npm = shutil.which("npm")
    if npm is None:
        unavailable(what, f"npm is not on PATH: cannot install the real {what}")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".install.lock", "w") as lock:  # parallel test runs install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if works(binary, version, env):
            return binary
        shutil.rmtree(prefix, ignore_errors=True)
        prefix.mkdir(parents=True)
        try:
            r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(prefix),
                                f"{package}@{version}"], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            shutil.rmtree(prefix, ignore_errors=True)
            unavailable(what, f"npm install {package}@{version} took over {INSTALL_TIMEOUT_S} s")
        if r.returncode != 0 or not works(binary, version, env):
            shutil.rmtree(prefix, ignore_errors=True)
            tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
            unavailable(what, f"cannot install {package}@{version} with npm (exit {r.returncode}): {' | '.join(tail)}")
    return binary


def works(binary: Path, version: str, env: dict | None = None) -> bool:
    if not binary.exists():
        return False
    try:
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60,
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch_home(), **(env or {})})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and version in r.stdout.split()


def scratch_home() -> str:
    """A HOME of its own for `--version`: run as root, an agent creates its dot-dirs in HOME, and a
    made-up path such as /nonexistent then exists on the machine (it did: other tests rely on it not)."""
    home = tempfile.mkdtemp(prefix="agent-version-home-")
    atexit.register(shutil.rmtree, home, True)
    return home
