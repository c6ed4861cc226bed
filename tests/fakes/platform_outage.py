"""A chat platform's outage, for the loopback fakes: for a while every API call is refused, in bursts:
by default 5xx (500, 502, 503 in turn) and 429 with Retry-After take turns, as a platform that is down or
overloaded does.

A refused call was not processed. ``refused`` counts the refusals by status; ``ended_at`` (``time.time()``)
says when calls are served again, so tests can measure how long delivery took after the platform came back.
"""

from __future__ import annotations

import collections
import threading
import time

SERVER_ERRORS = (500, 502, 503)
BURSTS = (500, 429, 502, 429, 503, 429)  # the status of each burst, in turn


class Outage:
    def __init__(self, seconds: float, burst_s: float = 3.0, retry_after: int = 1, bursts: tuple[int, ...] = BURSTS):
        self.started_at = time.time()
        self.ended_at = self.started_at + seconds
        self.burst_s, self.retry_after, self.bursts = burst_s, retry_after, bursts
        self.refused: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()

    def refusal(self) -> int | None:
        """The status to answer a call arriving now with (counted), or None when the platform is up."""
        now = time.time()
        if not self.started_at <= now < self.ended_at:
            return None
        status = self.bursts[int((now - self.started_at) // self.burst_s) % len(self.bursts)]
        with self._lock:
            self.refused[status] += 1
        return status

    def end_after(self, seconds: float) -> None:
        """Calls are served again ``seconds`` from now (whenever the outage was meant to end)."""
        self.ended_at = time.time() + seconds

    @property
    def refused_total(self) -> int:
        with self._lock:
            return sum(self.refused.values())

    def wait_until_over(self) -> None:
        time.sleep(max(0.0, self.ended_at - time.time()))
