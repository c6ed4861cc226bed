"""One enqueue API for every adapter: an RQ queue with JSON-serialized jobs, duplicate and busy checks, cancel.

Each RQ job calls ``worker.tasks.answer_job(job_json)`` (named by its dotted path, so this module never imports
torch). The queue's name is the deployment's namespace: its keys (``self.keys``, see ``worker.queue.keys``)
live under ``{queue name}:``:

- ``{name}:dedupe:{job_id}`` (24 h): set once a job id is accepted, so a redelivered event never runs twice,
  even after the first answer finished and RQ forgot the job;
- ``{name}:active:{platform}:{user_id}``: a sorted set of the person's queued and running job ids (score: the
  time it was accepted), emptied by ``release``;
- ``{name}:cancel:{job_id}`` (1 h): a cancel request for a running job, polled by the worker.

The name, the caps' defaults and every other default are named once, in ``worker.settings``.

A job Redis loses in a crash (queued in the last second before it, see ``worker.queue.lost_jobs``) is queued again by
the process that queued it, a few seconds later.

The duplicate and both limits are checked and the slot reserved in one Lua script, so concurrent adapters
cannot overshoot a limit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from redis import Redis
from rq import Queue, Retry, Worker
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from worker.queue.job import Job
from worker.queue.keys import DEFAULT_NAMESPACE, RedisKeys
from worker.queue.lost_jobs import LostJobWatch
from worker.queue.redis_connection import as_text
from worker.settings import DEFAULT_PER_USER_JOBS, DEFAULT_QUEUED_JOBS, Settings

log = logging.getLogger(__name__)

TASK = "worker.tasks.answer_job"
SERIALIZER = JSONSerializer  # workers must read the queue with the same serializer
DEDUPE_TTL_S = 24 * 3600
CANCEL_TTL_S = 3600
RESULT_TTL_S = 3600
FAILURE_TTL_S = 7 * 24 * 3600
STALE_AFTER_S = 60  # an active entry this old whose RQ job is gone or done was never released: drop it
DONE = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED}

# KEYS: dedupe key, the user's active set, the RQ queue list. ARGV: job id, per-user cap, total cap, dedupe
# TTL, now. Returns 0 (reserved), 1 (duplicate), 2 (user cap), 3 (global cap).
RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 2 end
if redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[3]) then return 3 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 0
"""


@dataclass
class QueueLimits:
    per_user: int = DEFAULT_PER_USER_JOBS  # queued + running jobs per person
    total: int = DEFAULT_QUEUED_JOBS  # queued jobs
    job_timeout_s: int = 600
    retries: int = 3  # an abandoned (worker died) or failed job is re-queued this many times
    # Waits between retries. RQ parks a retry with a wait in its ScheduledJobRegistry, which only a worker
    # started with ``with_scheduler=True`` moves back to the queue; without one, retries re-queue at once.
    retry_intervals_s: tuple[int, ...] = ()


class Busy(Exception):
    def __init__(self, reason: Literal["user", "global"], message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class DuplicateJob(Exception):
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} was already enqueued")
        self.job_id = job_id


@dataclass
class Enqueued:
    job_id: str
    position: int  # 1 = next


class JobQueue:
    def __init__(self, redis: Redis, limits: QueueLimits | None = None, name: str = DEFAULT_NAMESPACE):
        self.redis = redis
        self.limits = limits or QueueLimits()
        self.name = name
        self.keys = RedisKeys(name)  # the queue's name is the namespace of every key of this deployment
        self.rq = Queue(name, connection=redis, serializer=SERIALIZER, default_timeout=self.limits.job_timeout_s)
        self._reserve = redis.register_script(RESERVE)
        self._lost = LostJobWatch(redis, self._enqueue_again)

    def enqueue(self, job: Job) -> Enqueued:
        """Queue a job; raises DuplicateJob for an id seen in the last 24 h, Busy when a limit is reached."""
        active = self.keys.active(job.requester.key)
        self._drop_stale(active)
        keys = [self.keys.dedupe(job.job_id), active, self.rq.key]
        args = [job.job_id, self.limits.per_user, self.limits.total, DEDUPE_TTL_S, time.time()]
        verdict = int(self._reserve(keys=keys, args=args))
        if verdict == 1:
            raise DuplicateJob(job.job_id)
        if verdict == 2:
            raise Busy("user", self._user_busy_message())
        if verdict == 3:
            raise Busy("global", "I'm answering a lot of questions right now; please ask again in a minute.")
        try:
            self.rq.enqueue_call(
                TASK,
                args=(job.to_json(),),
                job_id=job.job_id,
                unique=True,
                timeout=self.limits.job_timeout_s,
                result_ttl=RESULT_TTL_S,
                failure_ttl=FAILURE_TTL_S,
                description=f"xwinbot job {job.job_id}",  # not the call string: that would copy the conversation
                meta={"requester": job.requester.key},
                retry=self._retry(),
            )
        except DuplicateJobError:  # RQ still holds a job of this id (older than our dedupe key)
            self.redis.zrem(active, job.job_id)
            raise DuplicateJob(job.job_id) from None
        except BaseException:
            self.redis.zrem(active, job.job_id)
            self.redis.delete(self.keys.dedupe(job.job_id))
            raise
        self._lost.watch(job)
        return Enqueued(job.job_id, self.position(job.job_id) or 1)

    def _enqueue_again(self, job: Job) -> None:
        """``job`` was lost with whatever else Redis lost (its reservation included): queue it anew."""
        self.redis.delete(self.keys.dedupe(job.job_id))
        self.redis.zrem(self.keys.active(job.requester.key), job.job_id)
        try:
            self.enqueue(job)
        except (Busy, DuplicateJob) as err:
            log.warning("could not queue lost job %s again: %s", job.job_id, err)

    def release(self, job: Job) -> None:
        """The job is finished, failed or cancelled: its requester's slot frees (its id stays a duplicate)."""
        self.redis.zrem(self.keys.active(job.requester.key), job.job_id)

    def position(self, job_id: str) -> int | None:
        """1-based place among the queued jobs; None once a worker took it (or it never was queued)."""
        index = self.rq.get_job_position(job_id)
        return None if index is None else index + 1

    def cancel(self, job_id: str) -> Literal["removed", "stopping", "unknown"]:
        rq_job = self.rq.fetch_job(job_id)
        if rq_job is None:
            return "unknown"
        status = rq_job.get_status(refresh=False)
        if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
            # LREM is atomic: 0 means a worker took the job (or it waits for a retry) since we fetched it.
            if self.rq.remove(job_id) or status != JobStatus.QUEUED:
                rq_job.cancel()
                requester = rq_job.get_meta(refresh=False).get("requester")
                if requester:
                    self.redis.zrem(self.keys.active(requester), job_id)
                return "removed"
            status = JobStatus.STARTED
        if status == JobStatus.STARTED:
            request_stop(self.redis, self.keys, job_id)
            return "stopping"
        return "unknown"

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.keys.cancel(job_id)))

    def workers(self) -> int:
        """Workers currently registered on this queue (0: questions wait until one starts)."""
        return Worker.count(connection=self.redis, queue=self.rq)

    def depth(self) -> int:
        """Queued jobs (not counting running ones)."""
        return self.rq.count

    def _retry(self) -> Retry | None:
        if not self.limits.retries:
            return None
        return Retry(max=self.limits.retries, interval=list(self.limits.retry_intervals_s) or 0)

    def _user_busy_message(self) -> str:
        n = self.limits.per_user
        waiting = "a question" if n == 1 else f"{n} questions"
        return f"You already have {waiting} waiting — please ask this one again once one of them is answered."

    def _drop_stale(self, active: str) -> None:
        """Forget entries whose job ended without ``release`` (e.g. its worker was killed on the last retry)."""
        for raw in self.redis.zrangebyscore(active, "-inf", time.time() - STALE_AFTER_S):
            job_id = as_text(raw)
            try:
                status = RQJob.fetch(job_id, connection=self.redis, serializer=SERIALIZER).get_status(refresh=False)
            except NoSuchJobError:
                status = None
            if status is None or status in DONE:
                self.redis.zrem(active, job_id)


def request_stop(redis: Redis, keys: RedisKeys, job_id: str) -> None:
    """Ask the worker answering ``job_id`` to stop (it polls ``cancel_requested``): for a job already running,
    as ``cancel`` does, or as a poster does when the asker stopped the answer on the platform itself."""
    redis.set(keys.cancel(job_id), 1, ex=CANCEL_TTL_S)


def job_queue(settings: Settings, redis: Redis) -> JobQueue:
    """The queue (name and caps) the settings describe."""
    limits = QueueLimits(per_user=settings.per_user_jobs, total=settings.queued_jobs)
    return JobQueue(redis, limits, name=settings.queue_name)
