"""Waiting for a condition with a deadline: the only way tests wait."""

from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
               what: str = "") -> object:
    """Poll until `predicate()` is truthy (exceptions count as "not yet"); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - shown below
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}; last: {last!r}")
        time.sleep(interval)
