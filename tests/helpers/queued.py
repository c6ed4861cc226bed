"""What the adapters put on a deployment's queue, read back as jobs (the schema the worker will read)."""

from __future__ import annotations

from redis import Redis

from worker.queue.job import Job
from worker.queue.job_queue import job_queue
from worker.settings import Settings


def queued_jobs(redis: Redis, settings: Settings) -> list[Job]:
    """The jobs waiting on ``settings``' queue, first queued first."""
    queue = job_queue(settings, redis)
    return [Job.from_json(queue.rq.fetch_job(job_id).args[0]) for job_id in queue.rq.get_job_ids()]


def queued_in(redis: Redis, settings: Settings, channel: str) -> list[Job]:
    """The waiting jobs whose answers go to ``channel``."""
    return [job for job in queued_jobs(redis, settings) if job.reply_to.channel_id == channel]
