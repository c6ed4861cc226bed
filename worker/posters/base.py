"""The interface every reply poster implements, and the throttled streaming reply built on it.

A poster receives the whole text so far on every call (platforms edit a placeholder message), so a retried
or repeated call is harmless. ``StreamingReply`` calls ``update`` at most once per interval (about a second,
as chat platforms expect), retries failed calls with backoff, and raises ``DeliveryFailed`` when a reply
cannot be delivered: the job then ends in RQ's failed registry with that reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from typing import TYPE_CHECKING

from worker import metrics

if TYPE_CHECKING:
    from worker.job import Job

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """The platform would not take the reply after every retry."""


class Poster(Protocol):
    def waiting(self, job: Job, position: int | None) -> None:
        """Show that the question is queued (position 1 = next) or being thought about (None)."""

    def update(self, job: Job, text: str) -> None:
        """Show the answer so far."""

    def finish(self, job: Job, text: str) -> None:
        """Post the final answer (splitting it when the platform needs)."""

    def fail(self, job: Job, message: str) -> None:
        """Tell the user, in the thread, why there is no answer."""


def deliver(call: Callable[[], None], *, attempts: int = 4, first_delay: float = 0.5, what: str = "reply") -> None:
    """Run one poster call, retrying with exponential backoff; DeliveryFailed after the last attempt."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            call()
            return
        except Exception as err:  # a poster may raise anything its platform client raises
            if attempt == attempts:
                metrics.POSTING_FAILURES.labels(what).inc()
                raise DeliveryFailed(f"could not deliver the {what} after {attempts} attempts: {err}") from err
            log.warning("delivering the %s failed (attempt %d/%d): %s", what, attempt, attempts, err)
            metrics.POSTING_RETRIES.labels(what).inc()
            time.sleep(delay)
            delay *= 2


class StreamingReply:
    """Collects answer pieces and shows them through a poster, at most one update per ``interval`` seconds."""

    def __init__(self, poster: Poster, job: Job, interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.poster, self.job, self.interval, self.clock = poster, job, interval, clock
        self.text = ""
        self.shown = ""
        self.last_update: float | None = None

    def add(self, piece: str) -> None:
        self.text += piece
        now = self.clock()
        if self.text != self.shown and (self.last_update is None or now - self.last_update >= self.interval):
            deliver(lambda: self.poster.update(self.job, self.text), what="streamed update")
            self.shown, self.last_update = self.text, now

    def finish(self, suffix: str = "") -> None:
        final = (self.text + suffix).strip() or "(no answer)"
        deliver(lambda: self.poster.finish(self.job, final), what="answer")
