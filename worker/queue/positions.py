"""Whether a job's answer has begun, so that a queue-position notice never overwrites it.

Position notices ("thinking… #3 in queue", shown by adapters when they queue a question and by
``worker.posters.position_notices`` while it waits) run under a per-job lock, and so does the worker that
marks the job started: a late notice can never overwrite an answer that has begun.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from redis import Redis

from worker.queue.keys import RedisKeys


@contextmanager
def _placeholder_lock(redis: Redis, keys: RedisKeys, job_id: str):
    """Serialises "show the queue position" with "the answer starts" for one job."""
    with redis.lock(keys.placeholder_lock(job_id), timeout=30, blocking_timeout=30):
        yield


# Marks the job started in one round trip unless a position notice holds the lock (-1: then under the lock),
# not the lock's three: each Redis call before an answer starts waits for the GIL in a busy worker.
_MARK_STARTED_UNLESS_LOCKED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"""


def mark_started(redis: Redis, keys: RedisKeys, job_id: str, ttl_s: int) -> bool:
    """The worker starts answering: True the first time (False: an earlier attempt began it). No position
    notice is shown after this returns: with the lock free none is being shown, and any later one sees the
    mark under the lock."""
    marked = redis.register_script(_MARK_STARTED_UNLESS_LOCKED)(
        keys=[keys.placeholder_lock(job_id), keys.started(job_id)], args=[ttl_s])
    if marked != -1:
        return bool(marked)
    with _placeholder_lock(redis, keys, job_id):
        return bool(redis.set(keys.started(job_id), 1, nx=True, ex=ttl_s))


def show_unless_started(redis: Redis, keys: RedisKeys, job_id: str, show: Callable[[], object]) -> bool:
    """Run ``show`` (a queue-position notice) only while the answer has not started; True if it ran."""
    with _placeholder_lock(redis, keys, job_id):
        if redis.exists(keys.started(job_id)):
            return False
        show()
        return True
