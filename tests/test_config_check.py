"""confabd --check-config / --print-config, a bad file at start (exit 78) and at SIGHUP (old settings kept)."""

from __future__ import annotations

import signal
import subprocess

from tests.conftest import PYTHON
from tests.waiting import wait_until

BAD = 'sync_interval_ms = "fast"\nsync_intervall_ms = 5\nsink = "s3"\n'


def confabd(cfd, *args, env=None):
    return subprocess.run([PYTHON, "-m", "confabd.master_cli", *args], env=env or cfd.env, cwd=cfd.root,
                          capture_output=True, text=True, timeout=60)


def test_check_config_lists_every_problem_with_a_hint_and_exits_78(cfd, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    r = confabd(cfd, "--check-config", "--config", str(bad))
    assert r.returncode == 78, r.stderr
    assert "sync_interval_ms = 'fast': Expected `int`, got `str`" in r.stderr
    assert "unknown key 'sync_intervall_ms' (did you mean 'sync_interval_ms'?)" in r.stderr
    assert "sink must be auto, http or archive, not 's3'" in r.stderr
    assert "3 problems in the configuration" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text("sync_interval_ms = 1000\n")
    r = confabd(cfd, "--check-config", "--config", str(good))
    assert (r.returncode, r.stdout.strip()) == (0, f"{good}: configuration OK")
    r = confabd(cfd, "--check-config", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 78 and "no such config file" in r.stderr
    r = confabd(cfd, "--check-config", env=dict(cfd.env, CONFABD_SHUTDOWN_TIMEOUT_MS="soon"))
    assert r.returncode == 78 and "CONFABD_SHUTDOWN_TIMEOUT_MS='soon'" in r.stderr


def test_print_config_says_where_each_value_comes_from(cfd, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("max_sessions_per_user = 7\n")
    r = confabd(cfd, "--print-config", "--config", str(good), env=dict(cfd.env, CONFABD_SHUTDOWN_TIMEOUT_MS="4000"))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert rows["max_sessions_per_user"].endswith(f"= 7  # {good}")
    assert rows["shutdown_timeout_ms"].endswith("= 4000  # $CONFABD_SHUTDOWN_TIMEOUT_MS")
    assert rows["sink"].endswith('= "auto"  # default')


def test_a_bad_config_at_start_exits_78(cfd, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    r = confabd(cfd, "--foreground", "--config", str(bad))
    assert r.returncode == 78 and "confabd --check-config" in r.stderr, r.stderr
    assert not cfd.ping()


def test_sighup_with_a_bad_file_keeps_the_settings_and_says_so_at_error(cfd):
    settings = cfd.home / ".config" / "confabd" / "confabd.toml"
    good = settings.read_text()
    master = cfd.master()
    settings.write_text(good + BAD)
    master.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "keeping the current settings" in master.log_text(), what="the reload to be refused")
    [line] = [l for l in master.log_text().splitlines() if "keeping the current settings" in l]
    assert " ERROR " in line and "sync_interval_ms" in line
    assert master.proc.poll() is None and cfd.ping()
    settings.write_text(good)
    master.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "settings reloaded" in master.log_text(), what="the good file to be taken")
