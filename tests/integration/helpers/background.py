"""Something a test keeps doing in a thread while it acts: poll a route, re-announce, count."""

from __future__ import annotations

import threading


class BackgroundLoop:
    """``step()`` every ``interval`` seconds in a daemon thread for the duration of a with-block;
    the block's end stops the loop and waits for the step under way."""

    interval = 0.05

    def __init__(self):
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.step()
            self.stopping.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self._thread.join()
