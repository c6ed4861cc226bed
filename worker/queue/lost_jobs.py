"""Questions Redis lost in a crash are queued again by the process that queued them.

Redis with ``appendfsync everysec`` syncs its append-only file to disk once a second: after a power cut or a
kernel crash (or a ``kill -9`` while a slow disk holds its writes back) it comes back without up to the last
second's writes, so a question queued just before would vanish and its placeholder say "thinking…" forever.
The enqueuing process (an adapter) still holds the job, so it looks again a few seconds later: when the job is
gone *and* Redis restarted since it was queued (its ``run_id`` changed), it queues it again. A job deleted on
purpose while Redis stayed up is never brought back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from redis import Redis
from redis.backoff import EqualJitterBackoff
from redis.exceptions import RedisError
from rq.job import Job as RQJob

from worker.queue.job import Job

log = logging.getLogger(__name__)

CHECK_AFTER_S = 3.0  # everysec: on disk within about a second (two when the disk is slow)
GIVE_UP_AFTER_S = 3600.0  # Redis unreachable for this long: the process's owner has bigger problems
# Still unreachable (after the client's own XWINBOT_REDIS_RETRY_S): look again after between half and all of 3 s,
# 6 s, 12 s, 15 s…; jittered, so the adapters that queued questions during one outage do not all look at the moment
# Redis is back. Capped low: the jobs are looked at in order, and a later one waits behind this one.
RETRY_BACKOFF = EqualJitterBackoff(cap=15.0, base=CHECK_AFTER_S / 2)


class LostJobWatch:
    """Looks at every job ``CHECK_AFTER_S`` after it was queued; ``requeue(job)`` for those Redis lost."""

    def __init__(self, redis: Redis, requeue: Callable[[Job], object], check_after_s: float = CHECK_AFTER_S):
        self.redis, self.requeue, self.check_after_s = redis, requeue, check_after_s
        # (when to look, when it was queued, Redis's run id then, the job, failed looks so far)
        self._pending: queue.Queue[tuple[float, float, str | None, Job, int]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, job: Job) -> None:
        """Call right after ``job`` was queued."""
        now = time.monotonic()
        self._pending.put((now + self.check_after_s, now, self.run_id(), job, 0))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xwinbot-lost-jobs", daemon=True)
                self._thread.start()

    def run_id(self) -> str | None:
        """Redis's id of this run of the server (a new one after every restart); None when it cannot say."""
        try:
            return self.redis.info("server")["run_id"]
        except RedisError:
            return None

    def _run(self) -> None:
        while True:
            due, queued_at, run_id, job, failures = self._pending.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                self.check(job, run_id)
            except RedisError as err:  # still unreachable after the client's own retries: look again later
                if time.monotonic() - queued_at < GIVE_UP_AFTER_S:
                    wait = RETRY_BACKOFF.compute(failures + 1)
                    self._pending.put((time.monotonic() + wait, queued_at, run_id, job, failures + 1))
                else:
                    log.error("could not make sure job %s survived a Redis outage: %s", job.job_id, err)
            except Exception:
                log.exception("could not queue job %s again", job.job_id)

    def check(self, job: Job, run_id: str | None) -> bool:
        """Queue ``job`` again if Redis restarted since ``run_id`` and lost it; True if it did."""
        if self.redis.exists(RQJob.key_for(job.job_id)):
            return False
        if run_id is not None and self.run_id() == run_id:
            return False  # Redis stayed up: the job was deleted on purpose
        log.warning("Redis restarted and lost job %s (queued just before); queueing it again", job.job_id)
        self.requeue(job)
        return True
