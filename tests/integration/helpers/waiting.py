"""Waiting for something a test started to happen (a server up, a route learned, a scrape answered)."""

from __future__ import annotations

import time


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.2, errors=(OSError,)):
    """The first true answer of ``predicate()``, asked every ``interval`` seconds for ``timeout``
    seconds (an exception of ``errors`` counts as no answer yet); else AssertionError naming
    ``what`` and the last answer or error."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except errors as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))
