"""The console client: asks through the very same path as a chat user (job → queue → worker → poster).

``xwinbot ask`` and ``xwinbot chat`` enqueue a job whose replies go to the console poster's Redis stream,
then print the answer as it streams. Until the first words arrive they say what the question waits for (its
place in the queue, a worker loading its model, no worker at all); a question given up (Ctrl-C) is cancelled.
"""

from __future__ import annotations

import getpass
import time
import uuid
from collections.abc import Iterator, Sequence

from redis import Redis
from redis.exceptions import RedisError
from rq.job import JobStatus

from bot.conversation import clean_text, is_blank
from worker.ops.status import workers_loading
from worker.queue.job import MAX_TEXT_CHARS, Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import JobQueue
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import as_text

# Each XREAD blocks at most this long: far below the client's socket timeout (SOCKET_TIMEOUT_S), which would end
# a longer block with a TimeoutError; it is also how soon the waiting message follows the queue.
READ_SLICE_S = 1.0
# The console's own wording of the adapters' "ask me something" (bot.conversation.EMPTY_QUESTION names a mention).
EMPTY_QUESTION = 'ask me something, e.g. xwinbot ask "What does HTTP 429 mean?"'
NO_WORKER = "no worker is running yet: start one with `xwinbot up` or `xwinbot worker`"
LOADING = "the worker is loading the model"
TAKEN = "a worker has taken it; waiting for the first words"
# RQ states in which a job will never be answered any more (FINISHED is not one: its answer is in the stream).
GIVEN_UP = {JobStatus.FAILED: "the question failed; `xwinbot status` shows why",
            JobStatus.CANCELED: "the question was cancelled", JobStatus.STOPPED: "the question was stopped"}


class BadQuestion(ValueError):
    """A question the console refuses before queuing it; the message is one line for the person who typed it."""


def checked_question(text: str) -> str:
    """The question as the job carries it (control characters dropped, like the chat adapters do), or
    ``BadQuestion`` when there is nothing to ask or it cannot fit in a job."""
    question = clean_text(text).strip()
    if is_blank(question):
        raise BadQuestion(EMPTY_QUESTION)
    if len(question) > MAX_TEXT_CHARS:
        raise BadQuestion(f"the question is too long: {len(question):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    return question


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
        timeout_s: float | None = None) -> Iterator[tuple[str, str]]:
    """Enqueue the conversation; yield ("waiting", what it waits for) whenever that changes, then ("text", new
    text) pieces, ("restart", "") when the answer starts over, or ("error", why). Waits as long as the job can
    still be answered (or ``timeout_s``). Left before the answer ended (Ctrl-C, ``close()``), it cancels the job."""
    job = console_job(turns, queue.keys)
    queue.enqueue(job)
    ended = False
    try:
        for kind, text in _answer(redis, queue, job.job_id, timeout_s):
            ended = kind == "error"  # the job is over: nothing to cancel even if the reader stops here
            yield kind, text
        ended = True
    finally:
        if not ended:
            cancel_quietly(queue, job.job_id)


def _answer(redis: Redis, queue: JobQueue, job_id: str, timeout_s: float | None) -> Iterator[tuple[str, str]]:
    shown, waiting, given_up = "", None, None
    for kind, text in read_reply(redis, queue.keys, job_id, timeout_s, idle=lambda: waiting_for(queue, job_id)):
        if kind == "idle" and text in GIVEN_UP.values():
            if text == given_up:  # twice, with an empty read between: no last reply was still on its way
                yield "error", text
                return
            given_up = text
        elif kind == "idle":
            given_up = None
            if not shown and text != waiting:  # once the answer streams, the waiting is over
                waiting = text
                yield "waiting", text
        elif kind == "restart":
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


def waiting_for(queue: JobQueue, job_id: str) -> str:
    """What a question that has no words of its answer yet waits for, in a few words."""
    position = queue.position(job_id)
    if position is None:
        rq_job = queue.rq.fetch_job(job_id)
        status = rq_job.get_status(refresh=False) if rq_job else JobStatus.CANCELED  # gone: nobody will answer
        return GIVEN_UP.get(status, TAKEN)
    place = f"#{position} in the queue"
    if queue.workers():
        return place
    return f"{place}; {LOADING if workers_loading(queue.redis, queue.keys) else NO_WORKER}"


def cancel_quietly(queue: JobQueue, job_id: str) -> None:
    """Cancel a question nobody waits for any more; Redis being away must not turn Ctrl-C into a traceback."""
    try:
        queue.cancel(job_id)
    except RedisError:
        pass


def read_reply(redis: Redis, keys: RedisKeys, job_id: str, timeout_s: float | None = 600,
               idle=None) -> Iterator[tuple[str, str]]:
    """(kind, text) entries of one job's reply stream (in the namespace of ``keys``), until its final answer or
    error; TimeoutError after ``timeout_s`` (None: no limit) without an entry. While nothing arrives, it yields
    ("idle", ``idle()``) after every read slice (when ``idle`` is given)."""
    key, last_id = keys.reply_stream(job_id), "0"
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        batch = redis.xread({key: last_id}, block=int(READ_SLICE_S * 1000), count=100)
        if not batch:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no reply for job {job_id} within {timeout_s:.0f} s")
            if idle is not None:
                yield "idle", idle()
            continue
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for entry_id, fields in batch[0][1]:
            last_id = entry_id  # the next read starts after the last entry seen
            kind, text = as_text(fields[b"kind"]), as_text(fields[b"text"])
            yield kind, text
            if kind in ("final", "error"):
                return
