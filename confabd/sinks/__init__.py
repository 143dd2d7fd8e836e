"""Destinations for a session's lines: `http` (the confab backend) and `archive` (local SQLite).

`open_sink` is the one place a sink is chosen and built (the session workers
and `confabctl save` both use it); `retry_wait` is the one retry schedule for
`Unavailable`. Sinks never retry by themselves (sinks/base.py).

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


def retry_wait(max_value: float = 60.0):
    """backoff wait generator: the server's Retry-After when given, else 1 s doubling to 60 s, full jitter."""
    import backoff

    expo = backoff.expo(max_value=max_value)
    expo.send(None)
    exc = yield
    while True:
        delay = next(expo)
        retry_after = getattr(exc, "retry_after", None)
        exc = yield retry_after if retry_after is not None else backoff.full_jitter(delay)
