"""The console client: asks through the very same path as a chat user (job → queue → worker → poster).

``xwinbot ask`` and ``xwinbot chat`` enqueue a job whose replies go to the console poster's Redis stream,
then print the answer as it streams.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Iterator, Sequence

from redis import Redis

from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import JobQueue
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import as_text


def console_job(turns: Sequence[tuple[str, str]], keys: RedisKeys | None = None) -> Job:
    """A console question; its id carries the namespace of ``keys`` (None: the default deployment's)."""
    job_id = (keys or RedisKeys()).job_id("console", uuid.uuid4().hex)
    return Job(
        job_id=job_id,
        turns=[JobTurn(role=role, text=text) for role, text in turns],
        requester=Requester(platform="console", user_id=getpass.getuser()),
        reply_to=ReplyTarget(platform="console", channel_id="terminal"),
    )


def ask(redis: Redis, queue: JobQueue, turns: Sequence[tuple[str, str]],
        timeout_s: float = 600) -> Iterator[tuple[str, str]]:
    """Enqueue the conversation; yield ("queued", position), then ("text", new text) pieces, or ("error", why)."""
    job = console_job(turns, queue.keys)
    enqueued = queue.enqueue(job)
    yield "queued", str(enqueued.position)
    if queue.workers() == 0:
        yield "note", "no worker is running yet: the question waits in the queue until `xwinbot up` starts one"
    shown = ""
    for kind, text in read_reply(redis, queue.keys, job.job_id, timeout_s):
        if kind == "restart":
            yield "restart", ""
            shown = ""
        elif kind in ("update", "final"):
            if not text.startswith(shown):  # the text was rewritten (e.g. cut at a stop): print it anew
                yield "restart", ""
                shown = ""
            yield "text", text[len(shown):]
            shown = text
        elif kind == "error":
            yield "error", text


def read_reply(redis: Redis, keys: RedisKeys, job_id: str, timeout_s: float = 600) -> Iterator[tuple[str, str]]:
    """(kind, text) entries of one job's reply stream (in the namespace of ``keys``), until its final answer or
    error."""
    key, last_id = keys.reply_stream(job_id), "0"
    while True:
        batch = redis.xread({key: last_id}, block=int(timeout_s * 1000), count=100)
        if not batch:
            raise TimeoutError(f"no reply for job {job_id} within {timeout_s:.0f} s")
        for entry_id, fields in batch[0][1]:
            last_id = entry_id  # the next read starts after the last entry seen
            kind, text = as_text(fields[b"kind"]), as_text(fields[b"text"])
            yield kind, text
            if kind in ("final", "error"):
                return
