"""Slack's native streaming (chat.startStream / appendStream / stopStream), for answers in the assistant view.

``SlackPoster`` uses it for a job with ``reply_to.assistant`` when ``slack_native_streaming`` is on:

- The first update starts a stream: a reply in the thread that Slack renders as it grows (and the thread's status
  goes, as it does whenever the app posts there). Its ts is recorded at once as message 0 and linked to the job, so
  reactions and buttons on it find the job. Later updates append only what is new (the poster gets the whole text).
- A stream only appends. When the new text does not extend what was streamed (a table realigned as it grows), the
  answer outgrows one message, Slack ended the stream (it does about 5 minutes after it started:
  ``message_not_in_streaming_state``), refused a chunk, or an append may or may not have been taken (a dropped
  connection), the poster stops the stream and edits that message with chat.update from then on, as in channels.
- ``stopped_by_user``: the person pressed stop in Slack; the job is asked to stop and no more updates are posted.
- The end: the stream is stopped with our message metadata, then the message is edited to the final rendering
  (the text, Regenerate and the feedback buttons), so a finished answer looks the same however it was streamed.

Text streams only up to its last whitespace, so every chunk starts with a word (leading whitespace of a chunk is
reported to get lost where chunks join) and a word such as "@here" is made ping-free whole, never half. It is
the same ping-free Markdown as an edited answer (``slack_text``), except that a code block still open is left open
(the stream goes on inside it; closing it would leave a fence that later text does not extend).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from worker.posters.markdown_tables import tables_to_code
from worker.posters.slack_text import no_pings, slack_size
from worker.queue.reply_index import ReplyIndex

if TYPE_CHECKING:
    from worker.queue.job import Job

log = logging.getLogger(__name__)

NOT_STREAMING = "message_not_in_streaming_state"  # stopped, or ended by Slack
STOPPED_BY_USER = "stopped_by_user"
LAST_WHITESPACE = re.compile(r"\s(?=\S*\Z)")
ORPHAN_MARGIN_S = 10.0  # how far the clocks of Slack and of the worker that created a job may disagree
ORPHAN_PAGES = 5  # pages of 200 thread messages read looking for a stream nobody recorded


class StreamEnded(Exception):
    """The stream takes no more text: its message goes on with chat.update."""


class StoppedByUser(Exception):
    """The person stopped the answer in Slack."""


def streamable(text: str, limit: int) -> str | None:
    """The Markdown a stream may show of ``text`` now (see the module's docstring), or None when the answer no
    longer fits one message of ``limit``."""
    markdown = no_pings(tables_to_code(text))
    if slack_size(markdown) > limit:
        return None
    whitespace = LAST_WHITESPACE.search(markdown)
    return markdown[:whitespace.end()] if whitespace else ""


@dataclass
class NativeStream:
    """One answer's stream: its message, and the Markdown sent into it so far."""

    client: WebClient
    channel: str
    ts: str
    sent: str

    @classmethod
    def start(cls, client: WebClient, job: Job, markdown: str) -> NativeStream:
        """Start streaming ``markdown`` as a reply in the job's thread. Outside a DM Slack wants the recipient."""
        target = job.reply_to
        response = client.chat_startStream(channel=target.channel_id, thread_ts=target.thread_id,
                                           recipient_user_id=job.requester.user_id,
                                           recipient_team_id=target.team_id, markdown_text=markdown)
        return cls(client, target.channel_id, response["ts"], markdown)

    def extend_to(self, markdown: str) -> None:
        """Append what ``markdown`` adds to what was sent (it starts with it). StreamEnded / StoppedByUser when
        the stream takes no more; other errors (Slack down) as raised, for the next update to try again."""
        new = markdown[len(self.sent):]
        if not new:
            return
        try:
            self.client.chat_appendStream(channel=self.channel, ts=self.ts, markdown_text=new)
        except SlackApiError as err:
            error = err.response.get("error")
            if error == STOPPED_BY_USER:
                raise StoppedByUser() from err
            if error in (NOT_STREAMING, "msg_too_long"):
                raise StreamEnded(f"Slack said {error}") from err
            raise
        except OSError as err:  # Slack may have appended it: only a chat.update of the whole text is sure
            raise StreamEnded(f"an append may or may not have been taken ({err})") from err
        self.sent = markdown


def stop_stream(client: WebClient, channel: str, ts: str, metadata: dict) -> None:
    """Stop the stream of message ``ts``, giving it our ``metadata``; one that already ended (stopped by us, by
    the person, or by Slack) is left as it is (and keeps no metadata)."""
    try:
        client.chat_stopStream(channel=channel, ts=ts, metadata=metadata)
    except SlackApiError as err:
        if err.response.get("error") not in (NOT_STREAMING, STOPPED_BY_USER):
            raise


def find_orphan_stream(client: WebClient, index: ReplyIndex, job: Job) -> str | None:
    """The ts of a stream an attempt at ``job`` started but never recorded (its worker died between
    chat.startStream and recording the ts, or the connection dropped before Slack's answer), or None.

    It is our bot's message in the thread, posted after the job was created, without our metadata (a stream gets
    it only when stopped) and linked to no job (every other answer's stream is linked the moment it starts).
    What this cannot tell apart: a message of ours without metadata that the adapter posted in the thread after
    the job was created, and the unrecorded stream of another job of the same thread whose worker died the same
    way; the oldest candidate is taken."""
    target = job.reply_to
    bot_id = client.auth_test().get("bot_id")
    pages = client.conversations_replies(channel=target.channel_id, ts=target.thread_id, include_all_metadata=True,
                                         oldest=f"{job.created_at - ORPHAN_MARGIN_S:.6f}", limit=200)
    for number, page in enumerate(pages):
        for message in page.get("messages") or []:
            if (message.get("bot_id") == bot_id and not message.get("metadata") and message["ts"] != target.thread_id
                    and index.job_id_for_message("slack", target.channel_id, message["ts"]) is None):
                return message["ts"]
        if number + 1 >= ORPHAN_PAGES:
            break
    return None
