"""The interface every reply poster implements, and the throttled streaming reply built on it.

A poster receives the whole text so far on every call (platforms edit a placeholder message), so a retried
or repeated call is harmless. ``StreamingReply`` calls ``update`` at most once per interval (about a second,
as chat platforms expect) and simply skips edits the platform refuses (the next one carries the whole text);
the final answer goes through ``deliver``, which retries a platform that is down (5xx, 429, a dropped
connection) with capped exponential backoff, jittered so that the answers waiting out one outage do not all
hit the platform at the moment it is back, honouring Retry-After, for the whole delivery retry window, and
raises ``DeliveryFailed`` after it: the job then ends in RQ's failed registry with that reason.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from redis.backoff import EqualJitterBackoff

from worker.ops import metrics
from worker.settings import DEFAULT_DELIVERY_RETRY_S, DEFAULT_UPDATE_INTERVAL_S

if TYPE_CHECKING:
    from worker.queue.job import Job

log = logging.getLogger(__name__)

PERMANENT_ATTEMPTS = 4  # an error that is not the platform being down (a bad request, a bug): ~3.5 s of tries
MAX_BACKOFF_S = 10.0  # a reply goes out at most this long after the platform is back (or its Retry-After)


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


def deliver(call: Callable[[], None], *, what: str = "reply", window_s: float = DEFAULT_DELIVERY_RETRY_S,
            attempts: int | None = None, first_delay: float = 0.5, max_delay: float = MAX_BACKOFF_S,
            clock: Callable[[], float] = time.monotonic) -> None:
    """Run one poster call until it succeeds. While the platform is down it is retried for ``window_s``
    seconds; any other error ``PERMANENT_ATTEMPTS`` times; ``attempts`` caps both. DeliveryFailed after that.
    The n-th wait is drawn between half and all of ``first_delay`` * 2^(n-1), capped at ``max_delay``."""
    started, attempt = clock(), 0
    backoff = EqualJitterBackoff(cap=max_delay, base=first_delay / 2)
    while True:
        attempt += 1
        try:
            call()
            return
        except Exception as err:  # a poster may raise anything its platform client raises
            down = platform_down(err)
            wait = platform_retry_after(err) if down else None
            wait = backoff.compute(attempt) if wait is None else wait
            limit = attempts or (None if down else PERMANENT_ATTEMPTS)
            elapsed = clock() - started
            if (limit is not None and attempt >= limit) or (down and elapsed + wait > window_s):
                metrics.POSTING_FAILURES.labels(what).inc()
                raise DeliveryFailed(f"could not deliver the {what} after {attempt} attempts: {err} "
                                     f"(retried for {elapsed:.1f} s)") from err
            log.warning("delivering the %s failed (attempt %d, %.1f s so far): %s; retrying in %.1f s",
                        what, attempt, elapsed, err, wait)
            metrics.POSTING_RETRIES.labels(what).inc()
            time.sleep(wait)


def platform_down(err: Exception) -> bool:
    """Whether an error means "the platform did not take it, try again later": a 5xx, a 429, no connection.
    Platform errors carry their HTTP status as ``status`` (DiscordError) or ``response.status_code`` (slack_sdk)."""
    if isinstance(err, OSError):  # ConnectionError, TimeoutError, urllib's URLError, requests' errors
        return True
    status = getattr(err, "status", None) or getattr(getattr(err, "response", None), "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def platform_retry_after(err: Exception) -> float | None:
    """The wait a 429 asked for, in seconds (``retry_after`` on DiscordError, the Retry-After header on Slack's)."""
    value = getattr(err, "retry_after", None)
    if value is None:
        headers = getattr(getattr(err, "response", None), "headers", None) or {}
        value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
        value = value[0] if isinstance(value, list) and value else value
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class StreamingReply:
    """Collects answer pieces and shows them through a poster, at most one update per ``interval`` seconds.

    A refused edit is not retried on the spot: the next one (after a backoff while the platform is down) shows
    the whole text anyway, and only the final answer must arrive."""

    def __init__(self, poster: Poster, job: Job, interval: float = DEFAULT_UPDATE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, retry_window_s: float = DEFAULT_DELIVERY_RETRY_S,
                 max_backoff_s: float = MAX_BACKOFF_S):
        self.poster, self.job, self.interval, self.clock = poster, job, interval, clock
        self.retry_window_s = retry_window_s
        # after the n-th refusal in a row, no edit for between half and all of interval * 2^n (capped)
        self.backoff = EqualJitterBackoff(cap=max_backoff_s, base=interval)
        self.text = ""
        self.shown = ""
        self.next_update_at = -math.inf
        self.refused = 0  # edits refused in a row

    def add(self, piece: str) -> None:
        self.text += piece
        now = self.clock()
        if self.text == self.shown or now < self.next_update_at:
            return
        try:
            self.poster.update(self.job, self.text)
        except Exception as err:
            self.refused += 1
            backoff = self.backoff.compute(self.refused)
            self.next_update_at = now + max(backoff, platform_retry_after(err) or 0.0)
            log.warning("a streamed update was refused (%s); skipping edits for %.1f s", err,
                        self.next_update_at - now)
            metrics.POSTING_RETRIES.labels("streamed update").inc()
            return
        self.refused = 0
        self.shown, self.next_update_at = self.text, now + self.interval

    def finish(self, suffix: str = "") -> None:
        final = (self.text + suffix).strip() or "(no answer)"
        deliver(lambda: self.poster.finish(self.job, final), what="answer", window_s=self.retry_window_s)
