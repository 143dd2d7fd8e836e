"""A team host: what the system config (/etc/confabd/confabd.toml) says to every user's tools.

The system service serves every user of the host; three of its settings
matter to processes that run as a user (confabctl, the hooks, a user's
workers), which read them from the file itself (it is 0644):

- `backend_url`: the backend for a user whose ~/.confab/config.json (and
  CONFAB_BACKEND_URL) names none. Users still bring their own key. A user's
  own backend_url wins: their key belongs to the server they logged in to,
  and must never be sent to another one. A user's own confabd.toml may name
  a default too; it comes before the host's.
- `user_masters = "never"`: confabctl does not start a user-mode master when
  no master answers (the system master is stopped, or restarting). The hook
  then leaves its State / inbox record, plus a note in the spool dir, and the
  system master adopts the session once it is back: a user master would
  otherwise keep those sessions after the service returns.
- `spool_dir` (/var/spool/confabd, mode 1733): where that note goes. A note
  is an empty file the user creates; the master believes only its owner
  (st_uid, the kernel's word), never its name (tenancy.Spool).

On the hook path only when no master answers: imports `os` (and tomllib then).
"""

import os

from . import client, paths

SPOOL_NOTE_PREFIX = "uid"


def system_config_path(env=None):
    """The system service's settings: CONFABD_SYSTEM_CONFIG (tests), else /etc/confabd/confabd.toml."""
    env = os.environ if env is None else env
    return env.get("CONFABD_SYSTEM_CONFIG") or paths.SYSTEM_SETTINGS


def system_value(key, env=None):
    return client.settings_value(system_config_path(env), key)


def default_backend_url(home, env=None, masters=""):
    """The backend_url for a user whose config.json names none: their own confabd.toml's, else
    `masters` (what a worker's master was configured with), else the host's; "" for none."""
    return client.user_settings_value(home, "backend_url") or masters or system_value("backend_url", env)


def autostart_refusal(env=None):
    """Why confabctl must not start a user-mode master here; "" when it may."""
    if system_value("user_masters", env) == "never":
        return (f"user masters are off on this host (user_masters = \"never\" in {system_config_path(env)}); "
                "the system master picks the session up when it is back")
    return ""


def spool_dir(env=None):
    return system_value("spool_dir", env) or paths.SYSTEM_SPOOL_DIR


def leave_note(session_id="", env=None):
    """Tell a system master that is down that this user has sessions on disk; the path, or "".

    One note per session (the prompt hook runs on every prompt): a note that is already there
    is left as it is. A no-op where there is no spool dir (no system service installed) or it
    cannot be written.
    """
    directory = spool_dir(env)
    name = f"{SPOOL_NOTE_PREFIX}{os.getuid()}.{session_id or os.urandom(8).hex()}"
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return path
    except OSError:
        return ""
    os.close(fd)
    return path
