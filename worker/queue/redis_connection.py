"""The Redis client every xwinbot process uses: it waits out a short Redis outage (a restart, a failover)
instead of failing the command, so an answer in progress or a question being queued simply pauses.

redis-py retries a command on ``ConnectionError``/``TimeoutError`` with its ``Retry`` (and re-connects inside
each attempt with the same ``Retry``); the backoff and the number of retries are sized here so that a command
gives up only after Redis has been unreachable for about ``XWINBOT_REDIS_RETRY_S`` seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

if TYPE_CHECKING:
    from worker.settings import Settings

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
CONNECT_TIMEOUT_S = 5.0  # an unreachable host (not just a closed port) fails each attempt this fast
# A reply that takes longer means a dead connection (the command is retried on a new one). So every blocking read
# (the console's XREAD, RQ's dequeue) blocks for well under this; redis-py's own default, made explicit.
SOCKET_TIMEOUT_S = 5.0


def outage_retry(wait_s: float) -> Retry:
    """Retries 50 ms, 100 ms, … doubling up to 1 s apart, as many as add up to ``wait_s`` seconds."""
    backoff = ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
    retries, waited = 0, 0.0
    while waited < wait_s:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries, supported_errors=(ConnectionError, TimeoutError))


def as_text(raw: bytes | str | None) -> str | None:
    """A Redis reply as text: clients without ``decode_responses`` answer bytes; None (no such key) stays None."""
    return raw.decode() if isinstance(raw, bytes) else raw


def redis_client(url: str, retry_s: float) -> Redis:
    return Redis.from_url(url, retry=outage_retry(retry_s), socket_connect_timeout=CONNECT_TIMEOUT_S,
                          socket_timeout=SOCKET_TIMEOUT_S)


def redis_from_settings(settings: Settings) -> Redis:
    """The client for ``XWINBOT_REDIS_URL`` that rides out outages shorter than ``XWINBOT_REDIS_RETRY_S``."""
    return redis_client(settings.redis_url, settings.redis_retry_s)
