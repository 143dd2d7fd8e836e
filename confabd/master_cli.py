"""`confabd`: start the master, in the foreground or detached with python-daemon."""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import logging.handlers
import os
import signal
import stat
import sys
from typing import Callable, Optional

import msgspec

from . import __version__, config_check, fileio, logs, paths, tenancy
from .config import Settings, load_settings
from .errors import ConfabdError, ConfigError

log = logging.getLogger("confabd")

DAEMON_READY_TIMEOUT_S = 30.0
# User mode's log file rotates by itself (no logrotate looks after a home directory):
# at LOG_ROTATE_BYTES (CONFABD_LOG_ROTATE_BYTES overrides it) it becomes confabd.log.1, and
# LOG_BACKUPS old files are kept. System mode leaves that to logrotate (packaging/logrotate).
LOG_ROTATE_BYTES = 10 << 20
LOG_BACKUPS = 5


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """confabd's options (also what the packages' shell completion is generated from)."""
    parser = argparse.ArgumentParser(
        prog="confabd",
        description="The confabd master: runs one sync worker per Claude Code session "
                    "and answers confabctl on a Unix socket.",
        epilog="Environment: CONFABD_SOCKET, CONFABD_STATE_DIR, CONFAB_BACKEND_URL, CONFAB_API_KEY, "
               "CONFAB_SYNC_INTERVAL_MS, CONFAB_SYNC_JITTER_MS, CONFABD_SHUTDOWN_TIMEOUT_MS, "
               "CONFABD_LOG_ROTATE_BYTES (user mode: the log file rotates at this size, default 10 MiB). "
               "Signals: TERM/INT flush every session and exit (sessions whose Claude Code still runs "
               "are kept for the next master), HUP re-reads the config.")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--foreground", action="store_true",
                     help="stay in the foreground and log to stderr (the default)")
    how.add_argument("--daemon", action="store_true",
                     help="detach (python-daemon) and log to the log file")
    parser.add_argument("--system", action="store_true",
                        help="system mode: one master for the host, run as root")
    parser.add_argument("--config", metavar="FILE",
                        help="daemon settings (default ~/.config/confabd/confabd.toml, "
                             "/etc/confabd/confabd.toml with --system)")
    parser.add_argument("--socket", metavar="PATH", help="control socket path")
    parser.add_argument("--state-dir", metavar="DIR", help="sync dir (State and inbox files)")
    parser.add_argument("--pidfile", metavar="FILE",
                        help="pidfile, locked while the master runs (default: beside the socket)")
    parser.add_argument("--registry-dir", metavar="DIR",
                        help="system mode: root-owned list of the uids that have sessions, read at "
                             f"start to re-adopt them (default {paths.SYSTEM_REGISTRY_DIR})")
    parser.add_argument("--log-level", metavar="LEVEL",
                        choices=["debug", "info", "warning", "error", "critical"],
                        type=str.lower, help="debug, info, warning, error (default: info)")
    parser.add_argument("--log-file", metavar="FILE",
                        help="log file (default: stderr, or ~/.confab/logs/confabd.log with --daemon); "
                             "in user mode it rotates at 10 MiB, 5 old files kept")
    check = parser.add_mutually_exclusive_group()
    check.add_argument("--check-config", action="store_true",
                       help="check the settings file (--config, else the default) and the environment, "
                            "list every problem, exit 0 or 78; start nothing")
    check.add_argument("--print-config", action="store_true",
                       help="print the effective settings and where each came from; start nothing")
    parser.add_argument("--version", action="version", version=f"confabd {__version__}")
    return parser


class Options(msgspec.Struct, kw_only=True):
    """Everything resolved from flags, environment and config files."""

    mode: str  # tenancy.by_mode(mode): user or system
    home: str
    config_path: str
    settings: Settings
    socket_path: str
    sync_dir: str
    pidfile: str
    registry_dir: str
    log_file: str
    log_level: str


def resolve(args: argparse.Namespace, env=None) -> Options:
    env = os.environ if env is None else env
    kind = tenancy.kind(args.system)
    home = paths.home_dir(env)
    defaults = kind.default_paths(home, env)
    config_path = args.config or defaults.settings
    settings = settings_from(args, config_path, env)
    socket_path = os.path.abspath(os.path.expanduser(settings.socket or defaults.socket))
    sync_dir = paths.sync_dir(home, env, settings.state_dir)
    pidfile = args.pidfile or defaults.pidfile or os.path.join(os.path.dirname(socket_path), "confabd.pid")
    log_file = args.log_file or settings.log_file
    if not log_file and args.daemon:
        log_file = paths.default_log_file(home)
    return Options(mode=kind.mode, home=home, config_path=config_path,
                   settings=settings, socket_path=socket_path, sync_dir=sync_dir,
                   pidfile=os.path.abspath(pidfile), log_file=log_file,
                   registry_dir=os.path.abspath(args.registry_dir or paths.SYSTEM_REGISTRY_DIR),
                   log_level=(args.log_level or settings.log_level).upper())


def settings_from(args, config_path: str, env) -> Settings:
    """Config file, then environment, then flags (the strongest)."""
    settings = load_settings(config_path, env, required=bool(args.config))
    changes = {}
    if args.socket:
        changes["socket"] = args.socket
    if args.state_dir:
        changes["state_dir"] = args.state_dir
    if changes:
        settings = msgspec.structs.replace(settings, **changes)
    return msgspec.structs.replace(settings, state_dir=paths.sync_dir(paths.home_dir(env), env,
                                                                      settings.state_dir))


class PidFile:
    """A pidfile backed by fcntl.flock: the kernel drops the lock when we die,
    so a pidfile left by `kill -9` is stale exactly when its lock is free.

    Acquired before daemonizing (the fd, and so the lock, survive the fork);
    python-daemon enters it as its `pidfile` to write the daemon's own pid.
    """

    def __init__(self, path: str, dir_mode: int = 0o700):
        self.path = path
        self.dir_mode = dir_mode  # of its dir, when created: the socket beside it must stay reachable
        self.fd = -1

    def acquire(self) -> None:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            fileio.make_dirs(directory, self.dir_mode)  # ~/.confab too is born 0700
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfabdError(f"another confabd master (pid {holder}) holds {self.path}") from None
        self.fd = fd

    def write_pid(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1

    # python-daemon's pidfile protocol
    def __enter__(self):
        self.write_pid()
        return self

    def __exit__(self, *exc):
        self.release()


class _SafeOpen:
    """Log files that are never a symlink's target or anything but a regular file, with the
    mode set on what was opened: the log file's path may be in a directory others can write,
    and root must not chmod (or append to) whatever a planted link names."""

    file_mode: Optional[int] = None
    baseFilename: str
    encoding: Optional[str]
    errors: Optional[str]

    def _open(self):
        path = self.baseFilename
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600 if self.file_mode is None else self.file_mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(exc.errno, f"{path} is a symbolic link; refusing to follow it") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{path} is not a regular file")
            os.set_blocking(fd, True)
            if self.file_mode is not None:
                os.fchmod(fd, self.file_mode)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)


class LogFileHandler(_SafeOpen, logging.handlers.WatchedFileHandler):
    """System mode's file: reopened when logrotate has moved it away."""

    def __init__(self, filename: str, file_mode: Optional[int]):
        self.file_mode = file_mode
        super().__init__(filename)


class RotatingLogFile(_SafeOpen, logging.handlers.RotatingFileHandler):
    """User mode's file: rotated by the master itself at `max_bytes`, `backups` kept. Workers
    write through the descriptor they inherited, so until they restart their few lines go to
    the file that was current when they started (as after a logrotate)."""

    def __init__(self, filename: str, file_mode: Optional[int], max_bytes: int, backups: int = LOG_BACKUPS):
        self.file_mode = file_mode
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups)


def log_rotate_bytes(env=None) -> int:
    value = (os.environ if env is None else env).get("CONFABD_LOG_ROTATE_BYTES", "")
    try:
        return max(1024, int(value)) if value else LOG_ROTATE_BYTES
    except ValueError:
        return LOG_ROTATE_BYTES


def setup_logging(opts: Options, file_mode: Optional[int]) -> logging.Handler:
    if opts.log_file:
        directory = os.path.dirname(os.path.abspath(opts.log_file))
        fileio.make_dirs(directory, 0o700)
        handler: logging.Handler = (RotatingLogFile(opts.log_file, file_mode, log_rotate_bytes())
                                    if opts.mode == "user" else LogFileHandler(opts.log_file, file_mode))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.formatter_for(handler))  # the journal's priorities, or time and pid
    handler.addFilter(logs.QuietLibraries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(opts.log_level)
    return handler


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check_config or args.print_config:
        return judge_config(args)
    try:
        opts = resolve(args)
    except ConfigError as exc:  # 78: systemd does not restart it in a loop (RestartPreventExitStatus)
        print(f"confabd: {exc} (check it with: confabd --check-config)", file=sys.stderr)
        return config_check.EXIT_CONFIG
    except (ConfabdError, ValueError) as exc:
        print(f"confabd: {exc}", file=sys.stderr)
        return 1
    kind = tenancy.by_mode(opts.mode)
    problem = kind.startup_problem()
    if problem:
        print(f"confabd: {problem}", file=sys.stderr)
        return 1

    from .control_server import AlreadyRunning, remove_stale_socket

    pidfile = PidFile(opts.pidfile, kind.dir_mode)
    try:
        remove_stale_socket(opts.socket_path)  # also: refuse when a master answers
        pidfile.acquire()
    except (AlreadyRunning, ConfabdError) as exc:
        print(f"confabd: {exc}; not starting a second one", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"confabd: cannot start: {exc}", file=sys.stderr)
        return 1

    try:
        handler = setup_logging(opts, kind.log_file_mode)
    except OSError as exc:
        print(f"confabd: cannot open the log file: {exc}", file=sys.stderr)
        return 1

    if not args.daemon:
        with pidfile:
            return run_master(args, opts, kind, pidfile)
    return start_daemon(opts, pidfile, handler,
                        lambda on_ready: run_master(args, opts, kind, pidfile, on_ready))


def judge_config(args) -> int:
    env = os.environ
    kind = tenancy.kind(args.system)
    path = args.config or kind.default_paths(paths.home_dir(env), env).settings
    judge = config_check.check_config if args.check_config else config_check.print_config
    return judge(path, env, sys.stdout, sys.stderr, required=bool(args.config))


def run_master(args, opts: Options, kind, pidfile: PidFile, on_ready=None) -> int:
    from .control_server import AlreadyRunning
    from .master import Arbiter

    def reload_settings() -> Settings:
        try:
            return settings_from(args, opts.config_path, os.environ)
        except ConfigError:  # a person fixing the file wants every problem (SIGHUP's log, `confabctl reload`)
            problems = config_check.problems_in(opts.config_path, os.environ, required=bool(args.config))
            if len(problems) > 1:
                raise ConfigError("; ".join(problems)) from None
            raise

    tenants = kind(opts.settings, sync_dir=opts.sync_dir, home=opts.home, registry_dir=opts.registry_dir)
    arbiter = Arbiter(opts.settings, tenants, socket_path=opts.socket_path, reload_settings=reload_settings,
                      pidfile_fd=pidfile.fd, on_ready=on_ready)
    try:
        return arbiter.run()
    except (AlreadyRunning, OSError) as exc:
        log.error("cannot run: %s", exc)
        return 1


def start_daemon(opts: Options, pidfile: PidFile, handler: logging.Handler,
                 run: Callable[[Callable[[], None]], int]) -> int:
    """Detach with python-daemon. The launcher returns only once the daemon listens (or says
    why it could not), so `confabd --daemon && confabctl status` works, as init scripts expect."""
    ready_r, ready_w = os.pipe()
    # Started by a hook, the launcher is in Claude Code's process group: a terminal closing
    # sends that group SIGHUP. The daemon must outlive its launcher, so SIGHUP is ignored from
    # before the fork (no window in the child) until the master installs its own handler
    # (reload), and the child leaves the group at once (DaemonContext then detaches it fully).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if os.fork():
        os.close(ready_w)
        return wait_until_ready(ready_r, opts)
    os.close(ready_r)
    os.setsid()

    import daemon

    stream = getattr(handler, "stream", None)
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o077,
        pidfile=pidfile,
        detach_process=True,  # explicit: its heuristic is wrong under systemd --user
        files_preserve=[pidfile.fd, ready_w] + ([stream] if stream is not None else []),
        # Our own handlers are installed by the master; these keep job control quiet.
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
    with context:
        return run(lambda: _say_ready(ready_w))


def _say_ready(fd: int) -> None:
    """Tell the launcher; if it is gone (killed, or gave up waiting), run all the same."""
    try:
        os.write(fd, b"R")
    except OSError as exc:  # EPIPE: nobody reads any more
        log.warning("the launcher did not wait for the master to be ready (%s); running anyway",
                    exc.strerror or exc)
    finally:
        os.close(fd)


def wait_until_ready(fd: int, opts: Options, timeout: float = DAEMON_READY_TIMEOUT_S) -> int:
    """The launcher's side: 0 once the daemon says it listens; 1 if it died or hung first."""
    import select

    readable, _, _ = select.select([fd], [], [], timeout)
    answer = os.read(fd, 1) if readable else b""
    os.close(fd)
    if answer == b"R":
        return 0
    why = "did not become ready in time" if not readable else "exited before it was ready"
    print(f"confabd: the daemon {why}; see {opts.log_file or 'its log file'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
