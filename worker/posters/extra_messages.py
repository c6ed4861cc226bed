"""The platform messages one answer is spread over (message 0 is usually the adapter's placeholder).

Kept in Redis so a job retried after a worker crash edits the messages the first attempt posted instead of
posting new ones, and can delete the ones a longer first attempt left behind.
"""

from __future__ import annotations

from redis import Redis

from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import as_text
from worker.queue.reply_index import TTL_S


class ExtraMessages:
    """The ids of one answer's messages by their number (0, 1, …), for the poster of ``platform``."""

    def __init__(self, redis: Redis, keys: RedisKeys, platform: str, job_id: str):
        self.redis = redis
        self.key = keys.reply_parts(platform, job_id)

    def get(self, number: int) -> str | None:
        return as_text(self.redis.hget(self.key, str(number)))

    def remember(self, number: int, message_id: str) -> None:
        self.redis.hset(self.key, str(number), message_id)
        self.redis.expire(self.key, TTL_S)

    def numbered(self) -> dict[int, str]:
        """Every remembered message id by its number."""
        return {int(field): as_text(raw) for field, raw in self.redis.hgetall(self.key).items()}

    def forget(self, number: int) -> None:
        self.redis.hdel(self.key, str(number))

    def clear(self) -> None:
        self.redis.delete(self.key)
