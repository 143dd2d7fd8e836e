"""Where things live, per interface.md. Pure functions of (home, environment).

This module is on the hook path: it imports nothing but `os`.
"""

import os

SYSTEM_RUN_DIR = "/run/confabd"
SYSTEM_SOCKET = SYSTEM_RUN_DIR + "/control.sock"
SYSTEM_PIDFILE = SYSTEM_RUN_DIR + "/confabd.pid"
SYSTEM_SETTINGS = "/etc/confabd/confabd.toml"
SYSTEM_REGISTRY_DIR = "/var/lib/confabd/users"  # root-owned: which uids have sessions
SYSTEM_SPOOL_DIR = "/var/spool/confabd"  # 1733: users leave a note there for a system master that is down


def home_dir(env=None):
    env = os.environ if env is None else env
    return env.get("HOME") or os.path.expanduser("~")


def confab_dir(home):
    return os.path.join(home, ".confab")


def default_sync_dir(home):
    return os.path.join(confab_dir(home), "sync")


def sync_dir(home, env=None, configured=""):
    """The sync dir: CONFABD_STATE_DIR, else the config's state_dir, else ~/.confab/sync."""
    env = os.environ if env is None else env
    chosen = env.get("CONFABD_STATE_DIR") or configured or default_sync_dir(home)
    return os.path.abspath(os.path.expanduser(chosen))


def state_path(sync_dir_path, external_id):
    return os.path.join(sync_dir_path, external_id + ".json")


def inbox_path(sync_dir_path, external_id):
    return os.path.join(sync_dir_path, external_id + ".inbox.jsonl")


def lock_path(sync_dir_path, external_id):
    """The session's uploader lock (worker.py): a file of its own, never replaced like a transcript."""
    return os.path.join(sync_dir_path, external_id + ".lock")


def user_socket_path(home, env=None):
    """$XDG_RUNTIME_DIR/confabd/control.sock, else ~/.confab/run/control.sock."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "confabd", "control.sock")
    return os.path.join(confab_dir(home), "run", "control.sock")


def confab_config_path(home, env=None):
    """Backend credentials, as the Go confab CLI writes them: $CONFAB_CONFIG_PATH, else ~/.confab/config.json."""
    env = os.environ if env is None else env
    return env.get("CONFAB_CONFIG_PATH") or os.path.join(confab_dir(home), "config.json")


def user_settings_path(home):
    return os.path.join(home, ".config", "confabd", "confabd.toml")


def default_archive_path(home):
    return os.path.join(home, ".local", "share", "confabd", "archive.sqlite3")


def default_log_file(home):
    return os.path.join(confab_dir(home), "logs", "confabd.log")
