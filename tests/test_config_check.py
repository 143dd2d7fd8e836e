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


def test_check_config_judges_the_team_host_settings(tmp_path):
    """user_masters and backend_url (system mode for a team host): a wrong value is named."""
    bad = tmp_path / "bad.toml"
    bad.write_text('user_masters = "off"\nbackend_url = "http://backend.example.com"\n')
    r = subprocess.run([PYTHON, "-m", "confabd.master_cli", "--check-config", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert "user_masters must be auto or never, not 'off'" in r.stderr
    assert "plain http to a non-loopback host" in r.stderr


def test_backend_url_default_order_own_config_then_own_toml_then_the_hosts(tmp_path):
    import json

    from confabd.config import load_backend_config

    home = tmp_path / "home"
    (home / ".confab").mkdir(parents=True)
    (home / ".config" / "confabd").mkdir(parents=True)
    host = tmp_path / "system.toml"
    host.write_text('backend_url = "https://team.example.com"\n')
    env = {"CONFABD_SYSTEM_CONFIG": str(host)}
    config = home / ".confab" / "config.json"
    config.write_text(json.dumps({"api_key": "cfb_mine"}))
    assert load_backend_config(str(home), env).backend_url == "https://team.example.com"
    assert load_backend_config(str(home), env, default_url="https://master.example.com").backend_url \
        == "https://master.example.com"  # a worker: its master's settings
    (home / ".config" / "confabd" / "confabd.toml").write_text('backend_url = "https://mine.example.com"\n')
    assert load_backend_config(str(home), env).backend_url == "https://mine.example.com"
    assert load_backend_config(str(home), env, default_url="https://master.example.com").backend_url \
        == "https://mine.example.com"  # the user's own default comes before the system master's
    config.write_text(json.dumps({"api_key": "cfb_mine", "backend_url": "https://own.example.com"}))
    assert load_backend_config(str(home), env).backend_url == "https://own.example.com"  # the key's own server
    env["CONFAB_BACKEND_URL"] = "https://env.example.com"
    assert load_backend_config(str(home), env).backend_url == "https://env.example.com"
    assert load_backend_config(str(home), {}).api_key == "cfb_mine"
