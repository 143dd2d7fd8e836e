"""Configuration: daemon settings (TOML) and backend credentials (JSON).

Two files, two owners:
- `confabd.toml` (daemon settings: paths, intervals, sink) belongs to confabd;
  unknown keys are an error, so a typo is caught instead of silently ignored.
- `~/.confab/config.json` (backend_url, api_key, redaction) is written by the
  confab CLI; unknown keys are ignored there.
Environment variables override both (interface.md).
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Optional
from urllib.parse import urlsplit

import msgspec

from . import paths
from .errors import ConfigError

DEFAULT_SYNC_INTERVAL_MS = 30_000
DEFAULT_JITTER_MS = 5_000


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Daemon settings; every key is documented in packaging/confabd.toml."""

    state_dir: str = ""
    socket: str = ""
    log_level: str = "info"
    log_file: str = ""
    sink: str = "auto"  # auto | http | archive
    archive_path: str = ""
    sync_interval_ms: int = DEFAULT_SYNC_INTERVAL_MS
    sync_jitter_ms: int = -1  # -1: 5000 with the default interval, else 0
    shutdown_timeout_ms: int = 30_000
    finish_linger_ms: int = 300
    transcript_wait_s: float = 60.0
    transcript_poll_s: float = 2.0
    http_timeout_s: float = 30.0
    max_sessions_per_user: int = 64
    max_requests_per_second: float = 50.0
    oversized_lines: str = "stand-in"  # stand-in | block: a line over the chunk limit ("truncate": old name)
    max_chunks_per_file: int = 30_000  # the backend's cap per file; chunk spacing is planned against it
    worker_timeout_s: float = 300.0  # a worker silent this long is hung: killed, restarted (0: never)
    failed_retry_s: float = 300.0  # a session in `failed` (crash loop) is tried again this often
    # A team host (hostwide.py): the backend for users whose ~/.confab/config.json names none,
    # whether confabctl may start user-mode masters, and where users leave a note for the
    # system master when it is down.
    backend_url: str = ""
    user_masters: str = "auto"  # auto | never
    spool_dir: str = ""  # "": /var/spool/confabd

    def __post_init__(self):
        if self.sink not in ("auto", "http", "archive"):
            raise ValueError(f"sink must be auto, http or archive, not {self.sink!r}")
        if self.oversized_lines == "truncate":  # the name before 2026-12; same behaviour
            self.oversized_lines = "stand-in"
        if self.oversized_lines not in ("stand-in", "block"):
            raise ValueError(f"oversized_lines must be stand-in or block, not {self.oversized_lines!r}")
        if self.max_chunks_per_file < 1:
            raise ValueError("max_chunks_per_file must be at least 1")
        for name in ("sync_interval_ms", "shutdown_timeout_ms", "finish_linger_ms", "worker_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.failed_retry_s <= 0:
            raise ValueError("failed_retry_s must be positive")
        if self.user_masters not in ("auto", "never"):
            raise ValueError(f"user_masters must be auto or never, not {self.user_masters!r}")
        if self.backend_url:
            try:
                self.backend_url = check_backend_url(self.backend_url)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None

    @property
    def jitter_ms(self) -> int:
        if self.sync_jitter_ms >= 0:
            return self.sync_jitter_ms
        return DEFAULT_JITTER_MS if self.sync_interval_ms == DEFAULT_SYNC_INTERVAL_MS else 0


ENV_INT_OVERRIDES = {
    "CONFAB_SYNC_INTERVAL_MS": "sync_interval_ms",
    "CONFAB_SYNC_JITTER_MS": "sync_jitter_ms",
    "CONFABD_SHUTDOWN_TIMEOUT_MS": "shutdown_timeout_ms",
    "CONFABD_FINISH_LINGER_MS": "finish_linger_ms",
}


def load_settings(path: Optional[str] = None, env=None, required: bool = False) -> Settings:
    """Read settings from `path` (missing is fine unless `required`), then apply the environment."""
    env = os.environ if env is None else env
    settings = Settings()
    if path:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if required:
                raise ConfigError(f"{path}: no such config file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        else:
            settings = _decode_settings(path, data)
    return _apply_env(settings, env)


def _decode_settings(path: str, data: bytes) -> Settings:
    try:
        return msgspec.toml.decode(data, type=Settings)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _apply_env(settings: Settings, env) -> Settings:
    changes: dict[str, Any] = {}
    if env.get("CONFABD_STATE_DIR"):
        changes["state_dir"] = env["CONFABD_STATE_DIR"]
    if env.get("CONFABD_SOCKET"):
        changes["socket"] = env["CONFABD_SOCKET"]
    for var, field in ENV_INT_OVERRIDES.items():
        value = env.get(var)
        if value:
            try:
                changes[field] = int(value)
            except ValueError:
                raise ConfigError(f"{var}={value!r}: expected a whole number of milliseconds") from None
    return msgspec.structs.replace(settings, **changes) if changes else settings


# ---------------------------------------------------------------------------
# Backend credentials, as the confab CLI writes them.


class BindingCreds(msgspec.Struct):
    backend_url: str = ""
    api_key: str = ""


class BackendConfig(msgspec.Struct):
    backend_url: str = ""
    api_key: str = ""
    redaction: Optional[dict[str, Any]] = None
    # provider -> canonical Claude Code config dir -> its own backend (bindings.py)
    bindings: dict[str, dict[str, BindingCreds]] = {}

    def __repr__(self) -> str:  # never print the key
        key = "set" if self.api_key else "unset"
        return f"BackendConfig(backend_url={self.backend_url!r}, api_key=<{key}>)"


def load_backend_config(home: str, env=None, default_url: str = "") -> BackendConfig:
    """~/.confab/config.json with CONFAB_BACKEND_URL / CONFAB_API_KEY applied on top; without a
    backend_url in either, the default of the confabd.toml files, `default_url` (a worker's: its
    master's settings) among them (hostwide.default_backend_url)."""
    env = os.environ if env is None else env
    path = paths.confab_config_path(home, env)
    config = BackendConfig()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    else:
        if data.strip():
            try:
                config = msgspec.json.decode(data, type=BackendConfig)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ConfigError(f"{path}: not a valid confab config ({exc})") from None
    changes = {}
    if env.get("CONFAB_BACKEND_URL"):
        changes["backend_url"] = env["CONFAB_BACKEND_URL"]
    if env.get("CONFAB_API_KEY"):
        changes["api_key"] = env["CONFAB_API_KEY"]
    # An editor's trailing newline is not part of the key; any other character a
    # header cannot carry is refused when the key is used (HttpSink, check_api_key).
    changes["api_key"] = changes.get("api_key", config.api_key).strip()
    if not changes.get("backend_url", config.backend_url):
        from .hostwide import default_backend_url

        changes["backend_url"] = default_backend_url(home, env, default_url)  # "" when none is set
    return msgspec.structs.replace(config, **changes)


# An API key goes into a header: printable ASCII without spaces. (The server's
# are `cfb_` + 40 URL-safe base64 characters; other shapes are not refused.)
_API_KEY_RE = re.compile(r"[\x21-\x7e]*\Z")


def check_api_key(api_key: str) -> str:
    """The key without surrounding whitespace (an editor's trailing newline);
    ConfigError, which never shows the key, when it holds any other character
    a header cannot carry (http.client's own error would quote it)."""
    api_key = api_key.strip()
    if not _API_KEY_RE.match(api_key):
        raise ConfigError("the api_key (~/.confab/config.json or CONFAB_API_KEY) contains a space or a control "
                          "character; it cannot be a confab API key (not shown here)")
    return api_key


def choose_sink(settings: Settings, backend: BackendConfig) -> str:
    """'archive' when asked for or when no backend is configured, else 'http'."""
    if settings.sink == "archive":
        return "archive"
    if settings.sink == "http" or backend.backend_url:
        return "http"
    return "archive"


# What a backend_url may be made of: a scheme, a host name or IP literal, an
# optional port and an optional path, in plain ASCII. No user info (`@`), no
# backslash, no query or fragment, no percent-escapes, no spaces or controls:
# each is read differently by urlsplit (which this check uses) and by
# urllib3 (which connects), e.g. `http://10.0.0.1:80\@127.0.0.1/` is
# "127.0.0.1" to one and 10.0.0.1 to the other.
_URL_RE = re.compile(
    r"(?P<scheme>https?)://"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>(?:/[A-Za-z0-9._~!$&'()*+,;=:-]*)*)\Z",
    re.IGNORECASE,
)


def check_backend_url(url: str) -> str:
    """Plain http only for loopback; anything else must be https. Returns the URL without a trailing '/'.

    The URL must have the plain shape `_URL_RE` allows, so that the host
    checked here is the host connected to; the error says why not, without
    repeating a URL that could hold a credential or an escape sequence.
    """
    match = _URL_RE.match(url)
    if not match:
        raise ConfigError(f"backend_url {_shown(url)} is not a plain http(s) URL (scheme://host[:port][/path]; "
                          "no user@, backslash, query, fragment, %-escape, space or control character)")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise ConfigError(f"backend_url {_shown(url)}: port {port} is out of range")
    host = match.group("host")
    if match.group("scheme").lower() == "http" and not is_loopback(host):
        raise ConfigError(
            f"backend_url {_shown(url)} uses plain http to a non-loopback host; use https"
        )
    return url.rstrip("/")


def is_loopback_url(url: str) -> bool:
    """Whether a URL accepted by check_backend_url points at this machine (then: never through a proxy)."""
    host = urlsplit(url).hostname
    return bool(host) and is_loopback(host)


def _shown(url: str) -> str:
    """The URL for an error message: printable, user info (a credential) blanked, cut short."""
    from .text import printable

    shown = re.sub(r"(://)[^/@]*@", r"\1<user info>@", url)
    return repr(printable(shown)[:200])


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP literal in its plain form (127.0.0.1, ::1); nothing else."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
