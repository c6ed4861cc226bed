"""``xwinbot status`` and ``xwinbot requeue-failed``: what the queue and its workers are doing, at a glance.

Workers publish what they serve (model, device, batch size) under ``<queue name>:worker-info`` when they
start; everything else comes from RQ's own registries of the queue (``rq:wip:<queue name>`` …) and its
workers (``rq:workers:<queue name>``), so a deployment sees only its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from redis import Redis
from rq import Worker
from rq.job import Job as RQJob
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from worker.queue.job_queue import SERIALIZER, JobQueue
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import as_text

log = logging.getLogger(__name__)

# A worker loading its model says so for this long and renews it every third of it, so a worker killed while
# loading stops counting as "loading" within this time (it registers with RQ, and counts as alive, only once
# the model is loaded).
LOADING_CLAIM_S = 15.0


def publish_worker_info(redis: Redis, keys: RedisKeys, process_name: str, **info) -> None:
    """A worker process says what it serves (shown by ``xwinbot status``)."""
    redis.hset(keys.worker_info(), process_name, json.dumps(dict(info, started_at=time.time())))


def forget_worker_info(redis: Redis, keys: RedisKeys, process_name: str) -> None:
    redis.hdel(keys.worker_info(), process_name)


@contextmanager
def loading_announced(redis: Redis, keys: RedisKeys, process_name: str,
                      claim_s: float = LOADING_CLAIM_S) -> Iterator[None]:
    """While the block runs (the worker builds or loads its model), ``workers_loading`` counts this process;
    clients waiting for an answer show "the worker is loading the model" instead of "no worker is running"."""
    done = threading.Event()

    def claim() -> None:
        try:
            now = time.time()
            pipe = redis.pipeline()
            pipe.zremrangebyscore(keys.workers_loading(), "-inf", now)  # claims of workers killed while loading
            pipe.zadd(keys.workers_loading(), {process_name: now + claim_s})
            pipe.execute()
        except Exception:  # Redis away: the claim lapses, which only changes what a waiting client shows
            log.warning("could not say that the model is loading", exc_info=True)

    def renew() -> None:
        while not done.wait(claim_s / 3):
            claim()

    claim()  # in place before the block starts, not whenever the thread first runs
    thread = threading.Thread(target=renew, name="xwinbot-loading", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
        try:
            redis.zrem(keys.workers_loading(), process_name)
        except Exception:  # the claim lapses on its own
            log.warning("could not clear the loading claim", exc_info=True)


def workers_loading(redis: Redis, keys: RedisKeys) -> int:
    """Worker processes loading their model now (not yet taking questions)."""
    return int(redis.zcount(keys.workers_loading(), time.time(), "+inf"))


@dataclass
class FailedJob:
    job_id: str
    ended_at: float | None
    reason: str


@dataclass
class QueueStatus:
    queue_name: str
    waiting: int
    running: int
    finished: int
    failed: int
    loading: int = 0  # worker processes still loading their model
    processes: dict[str, dict] = field(default_factory=dict)  # process -> {"threads", "busy", "model", ...}
    failed_jobs: list[FailedJob] = field(default_factory=list)


def read_status(queue: JobQueue, failed_shown: int = 10) -> QueueStatus:
    rq_queue, redis = queue.rq, queue.redis
    failed_registry = FailedJobRegistry(queue=rq_queue)
    status = QueueStatus(
        queue_name=queue.name, waiting=rq_queue.count, running=StartedJobRegistry(queue=rq_queue).count,
        finished=FinishedJobRegistry(queue=rq_queue).count, failed=failed_registry.count,
        loading=workers_loading(redis, queue.keys),
    )
    info = {as_text(name): json.loads(raw) for name, raw in redis.hgetall(queue.keys.worker_info()).items()}
    for worker in Worker.all(queue=rq_queue):
        process = worker.name.rsplit(".", 1)[0]  # job threads are named <host>.<pid>.<id>.<slot>
        entry = status.processes.setdefault(process, {"threads": 0, "busy": 0, **info.get(process, {})})
        entry["threads"] += 1
        entry["busy"] += worker.get_state() == "busy"
    newest = failed_registry.get_job_ids(-failed_shown, -1)[::-1] if failed_shown else []
    for job_id, rq_job in zip(newest, RQJob.fetch_many(newest, redis, serializer=SERIALIZER)):
        status.failed_jobs.append(_failed(job_id, rq_job))
    return status


def _failed(job_id: str, rq_job: RQJob | None) -> FailedJob:
    if rq_job is None:
        return FailedJob(job_id, None, "(job data expired)")
    result = rq_job.latest_result()
    text = (result.exc_string if result and result.exc_string else "") or "unknown reason"
    reason = text.strip().splitlines()[-1]
    ended = rq_job.ended_at.timestamp() if rq_job.ended_at else None
    return FailedJob(job_id, ended, reason[:200])


def render(status: QueueStatus, redis_url: str) -> str:
    lines = [
        f"xwinbot status — queue {status.queue_name!r} at {redis_url}",
        f"  questions: {status.waiting} waiting, {status.running} being answered, "
        f"{status.finished} answered recently, {status.failed} failed",
    ]
    if status.loading:
        lines.append(f"  workers loading the model: {status.loading} (they take questions once it is loaded)")
    if not status.processes and not status.loading:
        lines.append("  workers: none alive — questions wait until `xwinbot worker` (or `up`) runs")
    for process, entry in sorted(status.processes.items()):
        model = entry.get("model") or "model unknown"
        device = entry.get("device") or "?"
        cache = (f", {entry['max_batch']} conversations × {entry['context_tokens']} tokens"
                 if entry.get("max_batch") and entry.get("context_tokens") else "")  # what the KV cache holds
        lines.append(f"  worker {process}: {entry['busy']}/{entry['threads']} job threads busy — "
                     f"{model} on {device}{cache}")
    if status.failed_jobs:
        lines.append(f"  failed (newest {len(status.failed_jobs)}; `xwinbot requeue-failed` retries them):")
    for failed in status.failed_jobs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(failed.ended_at)) if failed.ended_at else "?"
        lines.append(f"    {failed.job_id}  {when}  {failed.reason}")
    return "\n".join(lines)


def requeue_failed(queue: JobQueue, job_ids: list[str] | None = None) -> list[str]:
    """Put failed jobs back on the queue (all of them when ``job_ids`` is empty); the ids requeued."""
    registry = FailedJobRegistry(queue=queue.rq)
    chosen = job_ids or registry.get_job_ids()
    done = []
    for job_id in chosen:
        try:
            registry.requeue(job_id)
        except Exception:  # not in the registry (any more)
            continue
        done.append(job_id)
    return done
