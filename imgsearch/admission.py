"""Admission control for inference, per server process: refuse at once what would wait too long.

A process runs one inference at a time (the model is shared by its threads and uses every
core), so a request admitted behind ``n`` others waits about ``n`` times the cost of one. The
cost is learnt from the requests themselves: each one's time in the app divided by its place
in the queue (1 when it found none), averaged with a weight of 1/5 for the newest. A request
whose wait would exceed ``max_wait_s`` is refused before it queues, with the wait as its
Retry-After; so under any overload the admitted ones answer within about ``max_wait_s`` plus
one inference, and the rest learn at once to come back (bench/load.py --rate measures it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

# A first guess at one inference (s) until requests have been measured: 2-core figures
# (docs/BENCHMARKS.md: ~60 ms a search through gunicorn).
INITIAL_COST_S = 0.1
WEIGHT = 0.2


@dataclass
class Ticket:
    place: int  # requests ahead of this one when it was admitted, itself included
    started: float


class Admission:
    def __init__(self, max_wait_s: float, initial_cost_s: float = INITIAL_COST_S):
        self.max_wait_s = max_wait_s
        self.cost_s = initial_cost_s
        self.in_flight = 0
        self._lock = threading.Lock()

    def wait_s(self) -> float:
        """How long a request arriving now would wait for the model, about."""
        return self.in_flight * self.cost_s

    def enter(self) -> Ticket | float:
        """A Ticket when admitted (hand it to :meth:`leave`), else the seconds it would
        have waited."""
        with self._lock:
            wait = self.in_flight * self.cost_s
            if self.in_flight and wait > self.max_wait_s:
                return wait
            self.in_flight += 1
            return Ticket(self.in_flight, time.perf_counter())

    def leave(self, ticket: Ticket) -> None:
        elapsed = time.perf_counter() - ticket.started
        with self._lock:
            self.in_flight -= 1
            sample = elapsed / ticket.place
            self.cost_s += WEIGHT * (sample - self.cost_s)
