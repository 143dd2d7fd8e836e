"""Destinations for a session's lines: `http` (the confab backend) and `archive` (local SQLite).

`open_sink` is the one place a sink is chosen and built (the session workers
and `confabctl save` both use it); `retry_delay` is the one retry schedule for
`Unavailable` (`retry_until` runs a call on it). Sinks never retry by themselves (sinks/base.py).

Imports are inside the functions: `confabd.sinks.base` is imported by code that
never opens a sink, and the http sink pulls in requests.
"""

from __future__ import annotations

NO_API_KEY = "no api_key configured (~/.confab/config.json or CONFAB_API_KEY)"


def open_sink(settings, backend, home: str):
    """The sink `settings` and `backend` (a BackendConfig) choose for the user whose home is `home`.

    `sink.kind` says which. A missing API key is AuthFailed: the worker re-reads
    the credentials next cycle, save reports it.
    """
    from ..config import check_backend_url, choose_sink

    if choose_sink(settings, backend) == "archive":
        from ..paths import default_archive_path
        from .archive import ArchiveSink

        return ArchiveSink(settings.archive_path or default_archive_path(home))
    from .base import AuthFailed
    from .http import HttpSink

    if not backend.api_key:
        raise AuthFailed(NO_API_KEY, 401)
    return HttpSink(check_backend_url(backend.backend_url), backend.api_key, timeout=settings.http_timeout_s)


RETRY_MAX_S = 60.0
RETRY_AFTER_MIN_S, RETRY_AFTER_MAX_S = 1.0, 3_600.0


def retry_delay(failures: int, retry_after=None, rng=None) -> float:
    """Seconds to wait after `failures` failures in a row (1 for the first).

    The server's Retry-After when it is within 1..3,600 s (the newer original
    client's range), exactly; else 1 s doubling to 60 s with "equal jitter"
    (between half and all of it), so many workers spread out and the wait never
    collapses to nothing: a long outage costs about 1.3 requests a minute.
    """
    if retry_after is not None and RETRY_AFTER_MIN_S <= retry_after <= RETRY_AFTER_MAX_S:
        return float(retry_after)
    import random

    full = min(RETRY_MAX_S, 2.0 ** (max(1, failures) - 1))
    return full / 2 + (rng or random.random)() * full / 2


def retry_until(call, max_time: float, sleep=None, clock=None):
    """`call()`, again after each `Unavailable` on `retry_delay`'s schedule, for at
    most `max_time` seconds from the first call (the last wait is cut to what is
    left); the last `Unavailable` is raised once the time is up (for `confabctl save`).

    Its own ten lines rather than the `backoff` package, which imports asyncio:
    ~35 ms on every save's start-up (bench/RESULTS.md)."""
    import time

    from .base import Unavailable

    sleep, clock = sleep or time.sleep, clock or time.monotonic
    started, failures = clock(), 0
    while True:
        try:
            return call()
        except Unavailable as exc:
            elapsed = clock() - started
            if elapsed >= max_time:
                raise
            failures += 1
            sleep(min(retry_delay(failures, exc.retry_after), max_time - elapsed))
