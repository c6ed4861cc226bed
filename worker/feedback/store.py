"""Answers as they went out, and what people thought of them: 👍/👎 (with an optional reason) per answer.

The worker records each final answer with the model and prompt template that wrote it (``AnswerRecords``, kept a
week like the reply index). A click on a feedback button (Slack or Discord) becomes a ``Rating``: the job id, who
rated, good or bad, and a copy of the question, the answer, the model and the template, so the rating can be used
to evaluate models long after the answer's other traces expired. One person has one rating per answer: clicking
again replaces it; a 👎's reason arrives later (from a modal) and is added to the same rating.

Ratings are kept ``XWINBOT_FEEDBACK_RETENTION_DAYS`` (each rating's hash expires; the time index is trimmed on every
write). ``FEEDBACK_COUNTS`` counts every rating given, by platform and rating: ``xwinbot_feedback_total``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

from redis import Redis

from worker.queue.job import Job
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import as_text
from worker.queue.reply_index import TTL_S as ANSWER_TTL_S
from worker.settings import DEFAULT_FEEDBACK_RETENTION_DAYS

RatingValue = Literal["good", "bad"]
RATINGS: tuple[RatingValue, ...] = ("good", "bad")
MAX_REASON_CHARS = 1000  # a 👎's reason (the modals ask for "a short reason")


@dataclass(frozen=True)
class AnswerRecord:
    answer: str
    model: str | None
    template: str | None


class AnswerRecords:
    """The final answer of each job, with what produced it (written by the worker when the answer is out)."""

    def __init__(self, redis: Redis, keys: RedisKeys):
        self.redis, self.keys = redis, keys

    def remember(self, job_id: str, answer: str, model: str | None, template: str | None) -> None:
        record = json.dumps(asdict(AnswerRecord(answer, model, template)))
        self.redis.set(self.keys.answer(job_id), record, ex=ANSWER_TTL_S)

    def get(self, job_id: str) -> AnswerRecord | None:
        raw = self.redis.get(self.keys.answer(job_id))
        if raw is None:
            return None
        try:
            return AnswerRecord(**json.loads(raw))
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True)
class Rating:
    job_id: str
    platform: str
    user_id: str
    rating: RatingValue
    rated_at: float
    question: str
    answer: str | None  # None: the answer's record had expired (or the job never finished)
    model: str | None
    template: str | None
    reason: str | None = None

    @property
    def rating_id(self) -> str:
        return rating_id(self.job_id, self.platform, self.user_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def rating_id(job_id: str, platform: str, user_id: str) -> str:
    return f"{job_id}:{platform}:{user_id}"


class FeedbackStore:
    def __init__(self, redis: Redis, keys: RedisKeys, retention_days: float = DEFAULT_FEEDBACK_RETENTION_DAYS):
        self.redis, self.keys = redis, keys
        # At least a second: EXPIRE 0 would delete a rating as it is written (a tiny retention in a test).
        self.retention_s = max(1, round(retention_days * 24 * 3600))
        self.answers = AnswerRecords(redis, keys)

    def rate(self, job: Job, platform: str, user_id: str, rating: RatingValue, now: float | None = None) -> Rating:
        """Record (or replace) ``user_id``'s rating of ``job``'s answer; returns what was stored. A replaced
        rating keeps its reason only if it stays the same rating."""
        if rating not in RATINGS:
            raise ValueError(f"a rating is one of {RATINGS}, not {rating!r}")
        now = time.time() if now is None else now
        record = self.answers.get(job.job_id)
        previous = self.get(rating_id(job.job_id, platform, user_id))
        reason = previous.reason if previous and previous.rating == rating else None
        stored = Rating(job.job_id, platform, user_id, rating, now, job.turns[-1].text,
                        record.answer if record else None, record.model if record else None,
                        record.template if record else None, reason)
        self._write(stored)
        if previous is None or previous.rating != rating:  # the same click again is not another rating
            self.redis.hincrby(self.keys.feedback_counts(), f"{platform}:{rating}", 1)
        return stored

    def add_reason(self, job_id: str, platform: str, user_id: str, reason: str) -> Rating | None:
        """Attach a reason to the person's 👎 of the answer (the 👎 came first, the reason from a modal after it);
        None if there is none: no rating, or they changed it to 👍 while the modal was open."""
        current = self.get(rating_id(job_id, platform, user_id))
        if current is None or current.rating != "bad":
            return None
        updated = Rating(**{**asdict(current), "reason": reason.strip()[:MAX_REASON_CHARS] or None})
        self._write(updated)
        return updated

    def get(self, rating_id_: str) -> Rating | None:
        return self._parse(self.redis.hget(self.keys.feedback(rating_id_), "rating"))

    @staticmethod
    def _parse(raw: bytes | str | None) -> Rating | None:
        if raw is None:
            return None
        try:
            return Rating(**json.loads(raw))
        except (ValueError, TypeError):
            return None

    def newest(self, limit: int | None = None, rating: RatingValue | None = None) -> Iterator[Rating]:
        """Ratings newest first (those still kept), optionally only good or only bad ones."""
        self._trim()
        shown, start, page = 0, 0, 500
        while limit is None or shown < limit:
            ids = self.redis.zrevrange(self.keys.feedback_times(), start, start + page - 1)
            if not ids:
                return
            start += page
            with self.redis.pipeline(transaction=False) as pipe:  # a page in one round trip: exports run to 10⁵
                for raw_id in ids:
                    pipe.hget(self.keys.feedback(as_text(raw_id)), "rating")
                raws = pipe.execute()
            for raw in raws:
                found = self._parse(raw)
                if found is None or (rating and found.rating != rating):
                    continue
                yield found
                shown += 1
                if limit is not None and shown >= limit:
                    return

    def counts(self) -> dict[tuple[str, str], int]:
        """(platform, rating) -> ratings given, ever (a counter: a changed rating counts again, under its new value)."""
        out = {}
        for field, value in self.redis.hgetall(self.keys.feedback_counts()).items():
            platform, _, rating = as_text(field).rpartition(":")
            out[(platform, rating)] = int(value)
        return out

    def _write(self, stored: Rating) -> None:
        key = self.keys.feedback(stored.rating_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, "rating", stored.to_json())
            # Counted from when it was rated (a reason added later does not extend it), as the time index is.
            # EXPIRE, not EXPIREAT: the least-privilege Redis users allow only EXPIRE (deploy/redis/users.acl).
            pipe.expire(key, max(1, math.ceil(stored.rated_at + self.retention_s - time.time())))
            pipe.zadd(self.keys.feedback_times(), {stored.rating_id: stored.rated_at})
            self._trim(pipe)
            pipe.execute()

    def _trim(self, redis: Redis | None = None) -> None:
        """Forget ratings older than the retention (their hashes expire on their own)."""
        (redis or self.redis).zremrangebyscore(self.keys.feedback_times(), "-inf", f"({time.time() - self.retention_s}")
