"""Answers as the worker keeps them, for the feedback tests (real Redis, a private namespace per test)."""

from __future__ import annotations

from bot.console import console_job
from worker.feedback.store import AnswerRecords
from worker.queue.job import Job
from worker.queue.keys import RedisKeys


def answered(redis, keys: RedisKeys, text: str, answer: str | None, model: str | None = "xwin-13b",
             template: str | None = "vicuna") -> Job:
    """A question in ``keys``'s namespace whose answer the worker kept (None: no record, as after it expired)."""
    job = console_job([("user", text)], keys)
    if answer is not None:
        AnswerRecords(redis, keys).remember(job.job_id, answer, model, template)
    return job
