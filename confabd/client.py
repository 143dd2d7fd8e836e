"""The lean control client used by confabctl and the hooks.

It runs on every Claude Code start, so it imports only C modules: `_socket`
rather than `socket` (whose `enum` import costs ~8 ms), and the C half of the
stdlib json (`_json`) rather than `json` (which pulls in `re` and `enum`); no
msgspec. The wire format is the one of `confabd.control` (4-byte big-endian
length + JSON), which the master decodes with msgspec.
"""

import os
import sys

import _json
import _socket

from . import paths

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # a request to the master
# Replies may be large (a status of a user with thousands of agent files is
# several MB); requests to the master stay capped at MAX_FRAME.
MAX_REPLY_FRAME = 64 << 20


# ---------------------------------------------------------------------------
# JSON with the C accelerator of the stdlib json module, without importing json.


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name):
        raise ValueError(f"{name} is not valid JSON")


_scan = _json.make_scanner(_ScanContext())
_WHITESPACE = " \t\n\r"


def _not_serializable(obj):
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


_encode = _json.make_encoder(None, _not_serializable, _json.encode_basestring_ascii, None,
                             ":", ",", False, False, False)


def loads(data):
    """Parse one JSON document (bytes in UTF-8 or str); ValueError when it is not one."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8")  # UnicodeDecodeError is a ValueError
    start = len(data) - len(data.lstrip(_WHITESPACE))
    try:
        value, end = _scan(data, start)
        if not data[end:].strip(_WHITESPACE):
            return value
    except Exception:  # noqa: BLE001 - the C scanner's errors need json.decoder; let json say it
        pass
    import json  # the rare error path: its message says where the input went wrong

    return json.loads(data)


def dumps(obj):
    """Compact JSON text (ASCII)."""
    return "".join(_encode(obj, 0))


# ---------------------------------------------------------------------------


class NoMaster(Exception):
    """No master answers on the socket."""


class ProtocolError(Exception):
    """The master answered something that is not a valid reply."""


def user_settings_value(home, key):
    """One key of ~/.config/confabd/confabd.toml, read only when that file exists."""
    return settings_value(paths.user_settings_path(home), key)


def settings_value(path, key):
    """One string key of a confabd.toml; "" when the file, the key or a valid TOML is missing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    if key.encode() not in data:  # tomllib pulls in re and datetime: only parse when it can matter
        return ""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            return ""
    try:
        value = tomllib.loads(data.decode("utf-8")).get(key, "")
    except ValueError:  # also UnicodeDecodeError and TOMLDecodeError
        return ""
    return value if isinstance(value, str) else ""


def system_socket_path(env=None):
    """The system-mode master's socket: CONFABD_SYSTEM_SOCKET (tests), else /run/confabd/control.sock."""
    env = os.environ if env is None else env
    return env.get("CONFABD_SYSTEM_SOCKET") or paths.SYSTEM_SOCKET


def socket_candidates(env=None):
    """[(path, is_system)] in the order confabctl tries them.

    CONFABD_SOCKET alone when set; else the user config's `socket` (or the user
    socket), then the system socket.
    """
    env = os.environ if env is None else env
    if env.get("CONFABD_SOCKET"):
        return [(env["CONFABD_SOCKET"], False)]
    home = paths.home_dir(env)
    configured = user_settings_value(home, "socket")
    user = os.path.expanduser(configured) if configured else paths.user_socket_path(home, env)
    return [(user, False), (system_socket_path(env), True)]


def socket_path(env=None):
    """Where the master most likely listens (without connecting): the first candidate
    whose socket file exists, else the user socket. (path, is_system)."""
    candidates = socket_candidates(env)
    for path, system in candidates:
        if os.path.exists(path):
            return path, system
    return candidates[0]


def request_any(message, timeout=5.0, env=None):
    """`request` to the first candidate master that answers: (reply, path, is_system).

    NoMaster when none answers (its message names the user socket, where an
    auto-started master would listen).
    """
    candidates = socket_candidates(env)
    for path, system in candidates:
        try:
            return request(path, dict(message), timeout), path, system
        except NoMaster:
            continue
    tried = " nor ".join(path for path, _ in candidates)
    raise NoMaster(f"no confabd master answers on {tried}")


def request(path, message, timeout=5.0):
    """Send one request (a dict) and return the reply (a dict).

    Raises NoMaster when nothing listens on `path`, ProtocolError on a bad
    reply, OSError (e.g. TimeoutError) on other socket failures.
    """
    message.setdefault("v", PROTOCOL_VERSION)
    body = dumps(message).encode()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise NoMaster(f"no confabd master answers on {path} ({exc.strerror})") from None
        sock.sendall(len(body).to_bytes(4, "big") + body)
        size = int.from_bytes(_recv_exactly(sock, 4), "big")
        if size > MAX_REPLY_FRAME:
            raise ProtocolError(f"reply of {size} bytes is too large")
        data = _recv_exactly(sock, size)
    finally:
        sock.close()
    try:
        reply = loads(data)
    except ValueError as exc:
        raise ProtocolError(f"malformed reply from the master: {exc}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ProtocolError("malformed reply from the master: not a reply object")
    return reply


def _recv_exactly(sock, size):
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ProtocolError("the master closed the connection before replying")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def master_argv():
    """How to run the master: isolated (-I), so that neither the current directory
    (Claude Code's: the project, which is not trusted) nor PYTHON* variables can
    put code of theirs before the installed confabd."""
    return [sys.executable, "-I", "-m", "confabd.master_cli", "--daemon"]


def spawn_master(env=None):
    """Start a detached user-mode master (`confabd --daemon`) and return its launcher's pid at once.

    It starts in / (not in the caller's directory) with stdio on /dev/null, so
    the caller's pipes (Claude Code's) are not held open. The master itself
    refuses to run twice, so concurrent calls are safe.
    """
    env = dict(os.environ if env is None else env)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    argv = master_argv()
    pid = os.fork()  # (posix_spawn cannot change the directory)
    if pid:
        return pid
    try:
        os.chdir("/")
        fd = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(fd, target)
        os.execve(sys.executable, argv, env)
    finally:
        os._exit(127)
