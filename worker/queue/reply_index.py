"""Which job a bot message belongs to, and which threads the bot answers in; kept in Redis for a week.

Adapters use it to turn a reaction or button on an answer into "cancel / regenerate job X", and to know that a
message in a thread continues a conversation with the bot. Posters add the extra messages of long answers.
"""

from __future__ import annotations

from redis import Redis

from worker.queue.job import Job, JobRejected
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import as_text

TTL_S = 7 * 24 * 3600


class ReplyIndex:
    def __init__(self, redis: Redis, keys: RedisKeys):
        self.redis, self.keys = redis, keys

    def remember_job(self, job: Job) -> None:
        self.redis.set(self.keys.indexed_job(job.job_id), job.to_json(), ex=TTL_S)

    def remember_question(self, job: Job) -> None:
        """A question about to be queued: keep its job, and mark its thread as one the bot answers in."""
        self.remember_job(job)
        target = job.reply_to
        if target.thread_id:
            self.mark_thread(target.platform, target.channel_id, target.thread_id, job.job_id)

    def job(self, job_id: str) -> Job | None:
        raw = self.redis.get(self.keys.indexed_job(job_id))
        if raw is None:
            return None
        try:
            return Job.from_json(raw)
        except JobRejected:
            return None

    def link_message(self, platform: str, channel_id: str, message_id: str, job_id: str) -> None:
        """Message ``message_id`` shows (part of) the answer to ``job_id``."""
        self.redis.set(self.keys.message(platform, channel_id, message_id), job_id, ex=TTL_S)

    def job_id_for_message(self, platform: str, channel_id: str, message_id: str) -> str | None:
        return as_text(self.redis.get(self.keys.message(platform, channel_id, message_id)))

    def mark_thread(self, platform: str, channel_id: str, thread_id: str, origin_job_id: str = "") -> None:
        """The bot answers in this thread; ``origin_job_id``: the job whose question started it (kept once)."""
        key = self.keys.thread(platform, channel_id, thread_id)
        if not self.redis.set(key, origin_job_id, nx=True, ex=TTL_S):
            self.redis.expire(key, TTL_S)

    def thread_origin(self, platform: str, channel_id: str, thread_id: str) -> str | None:
        """The job whose question started a bot thread, when known."""
        return as_text(self.redis.get(self.keys.thread(platform, channel_id, thread_id))) or None

    def is_bot_thread(self, platform: str, channel_id: str, thread_id: str) -> bool:
        return bool(self.redis.exists(self.keys.thread(platform, channel_id, thread_id)))

    def claim(self, platform: str, source_id: str, ttl_s: int = 24 * 3600) -> bool:
        """True the first time a platform message/event id is seen: later deliveries of it are ignored."""
        return bool(self.redis.set(self.keys.seen(platform, source_id), 1, nx=True, ex=ttl_s))
