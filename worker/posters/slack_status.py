"""The status line of a Slack assistant thread ("xwinbot is thinking… #3 in queue"), shown while a question waits.

In the assistant view there is no placeholder message: the wait shows as the thread's loading status
(assistant.threads.setStatus). Slack removes it two minutes after it was set unless it is set again, and as soon as
the app posts in the thread. So a question still queued has its status set again every ``STATUS_REFRESH_S`` (the
``PositionAnnouncer`` asks the poster how often), and an answer that ends without a post (it only edited a message
shown before) clears it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slack_sdk import WebClient

from worker.posters.status_text import assistant_status

if TYPE_CHECKING:
    from worker.queue.job import ReplyTarget

STATUS_REFRESH_S = 60.0  # well within the two minutes a status lasts, with room for a slow round of notices


def show_status(client: WebClient, target: ReplyTarget, position: int | None) -> None:
    """Show in the target's thread that its question waits at ``position`` (1 = next), or is being thought about
    (None). The adapter sets it when it queues the question, the worker's poster from then on."""
    client.assistant_threads_setStatus(channel_id=target.channel_id, thread_ts=target.thread_id,
                                       status=assistant_status(position))


def clear_status(client: WebClient, target: ReplyTarget) -> None:
    client.assistant_threads_setStatus(channel_id=target.channel_id, thread_ts=target.thread_id, status="")
