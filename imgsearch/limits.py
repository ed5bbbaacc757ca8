"""Bounds on the work one worker process does at once: decodes of query images and fetches of
images by URL (README "Search by URL", docs/RELIABILITY.md "Every request's cost").

A :class:`Slots` is a per-process semaphore with a short wait; a request that cannot get a
slot in time is refused with :class:`Busy` (HTTP 503 with ``Retry-After``) rather than queued
behind work that may take seconds, so a burst of costly requests cannot hold every thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Unavailable


class Busy(Unavailable):
    """Every slot of a kind is taken; ``retry_after`` is the whole seconds to wait."""

    code = "busy"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Slots:
    """At most ``size`` holders at once; :meth:`hold` waits up to ``wait`` seconds (0: not at
    all) for a slot, then raises :class:`Busy`, whose message names ``what`` is busy."""

    def __init__(self, what: str, size: int, wait: float = 0.0, retry_after: float = 1.0):
        if size < 1 or wait < 0:
            raise ValueError("size must be at least 1 and wait not negative")
        self.what = what
        self.size = size
        self.wait = wait
        self.retry_after = max(1, math.ceil(retry_after))
        self._free = threading.BoundedSemaphore(size)

    @contextmanager
    def hold(self) -> Iterator[None]:
        got = self._free.acquire(timeout=self.wait) if self.wait else self._free.acquire(False)
        if not got:
            raise Busy(
                f"This server is busy with other {self.what} ({self.size} at once per worker); "
                f"try again in {self.retry_after} second{'s' if self.retry_after > 1 else ''}",
                self.retry_after,
            )
        try:
            yield
        finally:
            self._free.release()
