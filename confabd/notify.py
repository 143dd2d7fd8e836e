"""sd_notify(3) in a few lines: READY=1, STOPPING=1, WATCHDOG=1, STATUS=...

No dependency: a datagram to $NOTIFY_SOCKET (a leading '@' is the abstract
namespace). Errors are raised to the caller, which logs them; nothing is
swallowed silently. Workers must not inherit NOTIFY_SOCKET (the master unsets it).
"""

import os
import socket


def notify(message: str, env=None) -> bool:
    """Send `message` to the service manager; False when not run under one."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode(), address)
    return True


def watchdog_interval(env=None) -> float:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), 0 when not asked."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return 0.0
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0.0
    return usec / 2e6 if usec > 0 else 0.0
