"""How a Slack question shows that it waits, and what the wait turns into when the queue is busy or it is stopped.

In a channel (and in a DM without Slack's assistant view) the question gets a placeholder message, "thinking…"
with Stop and Regenerate buttons under it, which the answer later replaces. In an assistant thread the answer
streams natively and needs no placeholder: the wait is the thread's loading status ("xwinbot is thinking…"),
which Slack clears when the app posts in the thread. A busy queue or a stop before the answer started is then
said in a message of its own, posted once (``post_once``) so a question handled again never says it twice.
"""

from __future__ import annotations

from redis import Redis
from slack_sdk import WebClient

from worker.posters.slack import post_once
from worker.posters.slack_messages import status_body
from worker.posters.slack_status import show_status
from worker.posters.slack_text import escape
from worker.posters.status_text import STOPPED_BEFORE_START, waiting_text
from worker.queue.job import ReplyTarget
from worker.queue.keys import RedisKeys
from worker.queue.positions import show_unless_started


def post_placeholder(client: WebClient, target: ReplyTarget, job_id: str, look_first: bool) -> str:
    """Post "thinking…" with Stop and Regenerate in the target's thread (once); returns its ts."""
    return post_once(client, channel=target.channel_id, thread_ts=target.thread_id, job_id=job_id, part=0,
                     look_first=look_first, **status_body(f"_{waiting_text(None)}_", job_id))


def show_queued(client: WebClient, redis: Redis, keys: RedisKeys, target: ReplyTarget, job_id: str,
                position: int) -> None:
    """The job was queued at ``position`` (1: next): say so, unless its answer has already begun."""
    if target.assistant:
        show_unless_started(redis, keys, job_id,
                            lambda: show_status(client, target, position if position > 1 else None))
    elif position > 1:
        body = status_body(f"_{waiting_text(position)}_", job_id)
        show_unless_started(redis, keys, job_id, lambda: client.chat_update(
            channel=target.channel_id, ts=target.placeholder_id, **body))


def show_busy(client: WebClient, target: ReplyTarget, job_id: str, message: str, look_first: bool) -> None:
    """A queue limit refused the job: its placeholder says why (no buttons: there is nothing to stop), or, in an
    assistant thread, a message does."""
    show_final(client, target, job_id, f":hourglass: {escape(message)}", look_first)


def show_stopped(client: WebClient, target: ReplyTarget, job_id: str) -> None:
    """The asker stopped the job before it started."""
    show_final(client, target, job_id, f"_{STOPPED_BEFORE_START}_", look_first=True)


def show_final(client: WebClient, target: ReplyTarget, job_id: str, text: str, look_first: bool) -> None:
    if target.placeholder_id:  # blocks=[]: Slack keeps a message's blocks unless given an empty array
        client.chat_update(channel=target.channel_id, ts=target.placeholder_id, text=text, blocks=[])
    else:
        post_once(client, channel=target.channel_id, thread_ts=target.thread_id, job_id=job_id, part=0,
                  look_first=look_first, text=text)
