"""Every Redis call the Discord adapter makes, off the gateway's event loop and bounded.

discord.py heartbeats from the event loop: a Redis command that waits out an outage there (the client retries for
``XWINBOT_REDIS_RETRY_S``) stops the heartbeats, and Discord drops the gateway connection. So each call runs
in this adapter's own small thread pool, never on the loop and never in asyncio's default executor (on 2 cores
that has 6 threads, shared with discord.py and our file reading, which calls blocked on Redis would starve).

A thread pool rather than ``redis.asyncio``: the adapter shares the queue's synchronous API (``JobQueue`` with
its caps and lost-job watch, ``ReplyIndex``, RQ) with every other process, and a second, asynchronous copy of
it would be two rules for one thing. A pool of ``THREADS`` bounds what the outage can hold up; more calls wait
in its queue, which costs the loop nothing.

``until_reachable`` is for a call that must happen (a question's enqueue): it is retried with redis-py's
jittered backoff until Redis answers, and after ``ACK_AFTER_S`` without an answer ``on_wait`` tells the person
(the question is kept, not lost).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError, TimeoutError

log = logging.getLogger(__name__)

T = TypeVar("T")

THREADS = 4  # calls blocked at once by an outage; a question needs one at a time
ACK_AFTER_S = 2.0  # a call still unanswered after this long means Redis is away: tell the person
BACKOFF_BASE_S = 0.5  # between tries once a try gave up (each try already waited out XWINBOT_REDIS_RETRY_S)
BACKOFF_CAP_S = 10.0  # back within this long after Redis is
UNREACHABLE = (ConnectionError, TimeoutError)  # redis-py's: no answer (BusyLoadingError, an AOF loading, included)


class RedisCalls:
    def __init__(self, threads: int = THREADS, ack_after_s: float = ACK_AFTER_S):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="discord-redis")
        self.ack_after_s = ack_after_s
        self.backoff = EqualJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)

    async def once(self, call: Callable[..., T], *args) -> T:
        """``call(*args)`` in the pool: the loop goes on meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(call, *args))

    async def soon(self, call: Callable[..., T], *args) -> T:
        """``call(*args)`` or ``TimeoutError`` (asyncio's) after ``ACK_AFTER_S``: for an answer due within seconds
        (a button click); the call itself finishes or fails in the pool."""
        return await asyncio.wait_for(asyncio.shield(self.once(call, *args)), self.ack_after_s)

    async def until_reachable(self, call: Callable[..., T], *args,
                              on_wait: Callable[[], Awaitable[None]] | None = None) -> T:
        """``call(*args)``, tried again with jittered exponential backoff while Redis cannot be reached."""
        failures = 0
        while True:
            attempt = asyncio.ensure_future(self.once(call, *args))
            if on_wait is not None:
                done, _ = await asyncio.wait({attempt}, timeout=self.ack_after_s)
                if not done:
                    await on_wait()
                    on_wait = None
            try:
                return await attempt
            except UNREACHABLE as err:
                failures += 1
                wait = self.backoff.compute(failures)
                log.warning("Redis unreachable (%s: %s); trying again in %.1f s (try %d)", type(err).__name__, err,
                            wait, failures + 1)
                await asyncio.sleep(wait)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
