"""System mode: who may do what, how often, and which users have sessions.

- `Policy`: requests are attributed to the uid of the socket's peer
  (SO_PEERCRED, read by the master on accept). A user sees, finishes and
  registers only their own sessions; root (uid 0) sees and finishes all and is
  the only one who may shut the master down. Each user (not root) has a token
  bucket of `max_requests_per_second` requests (burst: 2 s worth, at least 20)
  and at most `max_sessions_per_user` live sessions.
- `Registry`: a root-owned directory with one empty file per uid that has (or
  had) sessions, so a restarted master knows whose sync dirs to list (as that
  user) without reading anybody's home as root. It lives in
  /var/lib/confabd/users by default: it must survive a master crash and a
  reboot alike, since a State left in a home dir by a crash or a power cut
  still has lines to upload (its parent is gone: the next master finishes it).
"""

from __future__ import annotations

import logging
import os
import stat
import time

log = logging.getLogger("confabd.users")

ROOT_UID = 0
MAX_CONNECTIONS_PER_USER = 32
MIN_BURST = 20


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> float:
        """0.0 when a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else 1.0


class Policy:
    def __init__(self, max_sessions_per_user: int, max_requests_per_second: float):
        self.buckets: dict[int, TokenBucket] = {}
        self.configure(max_sessions_per_user, max_requests_per_second)

    def configure(self, max_sessions_per_user: int, max_requests_per_second: float) -> None:
        self.max_sessions = max_sessions_per_user
        self.rate = max_requests_per_second
        self.buckets.clear()

    @staticmethod
    def is_admin(uid: int) -> bool:
        return uid == ROOT_UID

    @staticmethod
    def may_see(uid: int, owner: int) -> bool:
        return uid == ROOT_UID or uid == owner

    def throttle(self, uid: int) -> float:
        """0.0 if this request of `uid` may be served now, else when to retry (seconds)."""
        if uid == ROOT_UID or self.rate <= 0:
            return 0.0
        bucket = self.buckets.get(uid)
        if bucket is None:
            bucket = self.buckets[uid] = TokenBucket(self.rate, max(MIN_BURST, 2 * self.rate))
        return bucket.take()

    def over_session_cap(self, uid: int, live: int) -> bool:
        return uid != ROOT_UID and 0 < self.max_sessions <= live


class Registry:
    """`<dir>/<uid>`: empty root-owned files naming the users who have sessions."""

    def __init__(self, path: str):
        self.path = path

    def ensure(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PermissionError(f"{self.path} must be a directory owned by uid {os.geteuid()} "
                                  "and writable by it alone")

    def add(self, uid: int) -> None:
        entry = os.path.join(self.path, str(uid))
        if os.path.exists(entry):
            return
        try:
            self.ensure()
            fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.fsync(fd)
            os.close(fd)
        except OSError as exc:
            log.error("cannot record uid %d in %s (its sessions will not be re-adopted "
                      "after a restart): %s", uid, self.path, exc)

    def remove(self, uid: int) -> None:
        try:
            os.unlink(os.path.join(self.path, str(uid)))
        except FileNotFoundError:
            pass

    def uids(self) -> list[int]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(int(name) for name in names if name.isdigit())
