"""The console poster: replies go to a Redis stream per job, which ``xwinbot ask`` reads and prints.

Each entry carries the whole text so far, so the reader prints only what is new; a job retried after a worker
crash starts over with a ``restart`` entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis import Redis

from worker.queue.keys import RedisKeys

if TYPE_CHECKING:
    from worker.queue.job import Job

STREAM_TTL_S = 3600


class ConsolePoster:
    def __init__(self, redis: Redis, keys: RedisKeys):
        self.redis, self.keys = redis, keys

    def _add(self, job: Job, kind: str, text: str) -> None:
        key = self.keys.reply_stream(job.job_id)
        pipe = self.redis.pipeline()
        pipe.xadd(key, {"kind": kind, "text": text}, maxlen=1000)
        pipe.expire(key, STREAM_TTL_S)
        pipe.execute()

    def waiting(self, job: Job, position: int | None) -> None:
        self._add(job, "waiting", "" if position is None else str(position))

    def update(self, job: Job, text: str) -> None:
        self._add(job, "update", text)

    def finish(self, job: Job, text: str) -> None:
        self._add(job, "final", text)

    def fail(self, job: Job, message: str) -> None:
        self._add(job, "error", message)

    def restart(self, job: Job) -> None:
        self._add(job, "restart", "")
