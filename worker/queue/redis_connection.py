"""The Redis client every xwinbot process uses: it waits out a short Redis outage (a restart, a failover)
instead of failing the command, so an answer in progress or a question being queued simply pauses.

redis-py retries a command on ``ConnectionError``/``TimeoutError`` with its ``Retry`` (and re-connects inside
each attempt with the same ``Retry``); the backoff and the number of retries are sized here so that a command
gives up only after Redis has been unreachable for about ``XWINBOT_REDIS_RETRY_S`` seconds. The waits are
jittered (redis-py's ``EqualJitterBackoff``), so the processes waiting out one restart do not all knock at the
same moment when it comes back.

Every client is built here, from ``XWINBOT_REDIS_URL`` (``redis://user:password@host:port/db``, ``rediss://``
for TLS) and the TLS files of the settings, so the password, the ACL user and the CA reach every process alike.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from redis import Redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError, RedisError, TimeoutError
from redis.retry import Retry

if TYPE_CHECKING:
    from worker.settings import Settings

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
CONNECT_TIMEOUT_S = 5.0  # an unreachable host (not just a closed port) fails each attempt this fast
# A reply that takes longer means a dead connection (the command is retried on a new one). So every blocking read
# (the console's XREAD, RQ's dequeue) blocks for well under this; redis-py's own default, made explicit.
SOCKET_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0  # a start-up check or a /healthz probe: an answer at once, or "Redis is away"
TLS_SCHEMES = ("rediss",)


@dataclass(frozen=True)
class RedisTls:
    """Files for ``rediss://``: the CA that signed Redis's certificate (unset: the system's CAs) and, for mutual
    TLS, this client's own certificate and key. Passed to redis-py as ssl_ca_certs / ssl_certfile / ssl_keyfile."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisTls:
        # an empty variable (``XWINBOT_REDIS_CA_FILE=``) is unset: the system's CAs
        return cls(settings.redis_ca_file or None, settings.redis_cert_file or None, settings.redis_key_file or None)

    def client_options(self, url: str) -> dict:
        """redis-py's keywords for this URL; none for ``redis://`` (its plain connection class takes no ssl_*)."""
        if urlparse(url).scheme not in TLS_SCHEMES:
            return {}
        return {"ssl_ca_certs": self.ca_file, "ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}


def outage_retry(wait_s: float) -> Retry:
    """Retries about 50 ms, 100 ms, … doubling up to 1 s apart (each wait drawn between half and all of that), as
    many as add up to ``wait_s`` seconds on average."""
    backoff = EqualJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
    retries, waited = 0, 0.0
    while waited < wait_s:
        retries += 1
        waited += 0.75 * min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** retries)  # EqualJitterBackoff's mean wait
    return Retry(backoff, retries, supported_errors=(ConnectionError, TimeoutError))


def as_text(raw: bytes | str | None) -> str | None:
    """A Redis reply as text: clients without ``decode_responses`` answer bytes; None (no such key) stays None."""
    return raw.decode() if isinstance(raw, bytes) else raw


def redis_client(url: str, retry_s: float, tls: RedisTls | None = None) -> Redis:
    return Redis.from_url(url, retry=outage_retry(retry_s), socket_connect_timeout=CONNECT_TIMEOUT_S,
                          socket_timeout=SOCKET_TIMEOUT_S, **(tls or RedisTls()).client_options(url))


def redis_from_settings(settings: Settings) -> Redis:
    """The client for ``XWINBOT_REDIS_URL`` that rides out outages shorter than ``XWINBOT_REDIS_RETRY_S``."""
    return redis_client(settings.redis_url, settings.redis_retry_s, RedisTls.from_settings(settings))


def probe_client(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> Redis:
    """A client that does not wait out outages: a start-up check or a health probe answers at once."""
    tls = RedisTls.from_settings(settings).client_options(settings.redis_url)
    return Redis.from_url(settings.redis_url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=timeout_s,
                          socket_timeout=timeout_s, **tls)


def masked_url(url: str) -> str:
    """``url`` with its password as ``***``: the form every message and log prints."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    user = parsed.username or ""
    host = parsed.netloc.rpartition("@")[2]
    return parsed._replace(netloc=f"{user}:***@{host}").geturl()


def nothing_listens(err: RedisError) -> bool:
    """Whether the connection was refused: no server on that port (not one that refused us)."""
    cause = err.__cause__ or err.__context__
    return isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED \
        or "Connection refused" in str(err)


def describe_failure(err: RedisError, settings: Settings) -> str:
    """Why this process cannot use Redis, in one line naming the setting to check; never the password."""
    url = settings.redis_url
    parsed = urlparse(url)
    where = f"Redis at {parsed.hostname}:{parsed.port or 6379}"
    user = parsed.username or "default"
    if isinstance(err, AuthenticationError):
        if not parsed.password:
            return f"{where} needs a password (put it in XWINBOT_REDIS_URL: redis://user:password@host:port/db)"
        if "without any password configured" in str(err):
            return f"{where} has no password set, but XWINBOT_REDIS_URL gives one (check XWINBOT_REDIS_URL)"
        return f'{where} refused the password for user "{user}" (check XWINBOT_REDIS_URL)'
    if isinstance(err, NoPermissionError):
        return f'{where} does not let user "{user}" do this ({err}); check the ACL file and XWINBOT_REDIS_URL'
    text = str(err)
    if parsed.scheme in TLS_SCHEMES and any(word in text for word in ("SSL", "certificate", "TLS")):
        return f"TLS with {where} failed ({text}); check XWINBOT_REDIS_CA_FILE and the server's certificate"
    hint = "; if that Redis speaks TLS, use rediss://" if "reset by peer" in text and parsed.scheme == "redis" else ""
    return f"cannot reach Redis at XWINBOT_REDIS_URL={masked_url(url)} ({text}){hint}"
