"""The Slack reply poster: streams an answer into the placeholder the adapter posted, via ``chat.update``.

Answers go as a markdown block (Slack renders the model's Markdown; see ``slack_text`` for why and how it pings
no one) with Block Kit buttons under the last message (``slack_messages``: Stop and Regenerate while it runs,
Regenerate and 👍/👎 once finished) and a plain ``text`` fallback; a streamed edit holds back a link or code span
still being written, and a code block still open is closed, so every edit renders. Statuses are mrkdwn
(``_thinking…_`` with the buttons; a warning with ``blocks=[]``, since chat.update keeps a message's previous
blocks unless given an empty array).

In Slack's assistant view (``reply_to.assistant``, with ``slack_native_streaming``) there is no placeholder: the
wait is the thread's status line and the answer streams natively; ``slack_stream`` says how.

An answer longer than one Slack message continues in further thread messages (cut on paragraph/code-block
boundaries by ``split_message``; their ids kept by ``ExtraMessages`` for retried jobs). Slack's 429s are waited
out (slack_sdk's ``RateLimitErrorRetryHandler`` honours ``Retry-After``); ``msg_too_long`` makes the poster cut
smaller.

Retries come in two layers that add up in time, not in number: within one call the WebClient waits out up to
``rate_limit_retries`` 429s and retries a dropped connection once (slack_sdk's ``ServerErrorRetryHandler`` is
deliberately not used); a 5xx, or a 429 still refused, goes to ``deliver()``, which retries for the delivery
retry window, a deadline in time however long each call took.

Never a message twice: a dropped connection is retried blindly for every method but those that add something
Slack may have taken before the connection broke (``chat.postMessage``, ``chat.startStream``,
``chat.appendStream``). Every message we post carries our message ``metadata`` (the job id and part number);
after a dropped or timed-out post ``post_once`` looks for that message in the thread (or channel) and posts again
only when it is not there. The adapter's placeholder goes through the same function.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis import Redis
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest

from worker.posters.extra_messages import ExtraMessages
from worker.posters.markdown_spans import hold_back_unfinished
from worker.posters.slack_messages import answer_body, as_post, status_body, warning_body
from worker.posters.slack_text import message_parts
from worker.posters.status_text import RESTARTING, waiting_text
from worker.queue.keys import RedisKeys
from worker.queue.reply_index import ReplyIndex
from worker.settings import SLACK_API_URL

if TYPE_CHECKING:
    from worker.queue.job import Job

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 12_000  # markdown_text's documented limit, counted by slack_size
SMALLEST_LIMIT = 500
METADATA_EVENT_TYPE = "xwinbot_message"  # the event_type of the metadata on every message we post
POST_ATTEMPTS = 3  # posts tried by post_once while the connection drops and the message is not there
LOOKUP_PAGES = 10  # pages of 200 messages post_once reads looking for a post that may have been taken


# Methods that add to what people see: Slack may have taken one before the connection broke, and a blind retry
# would show a message (or a streamed piece) twice. Their callers check instead (post_once, SlackStream).
NOT_RETRIED_BLINDLY = ("chat.postMessage", "chat.startStream", "chat.appendStream")


class ConnectionRetryExceptPosts(ConnectionErrorRetryHandler):
    """slack_sdk's retry of a dropped connection, except for the methods in ``NOT_RETRIED_BLINDLY``."""

    def _can_retry(self, *, state, request: HttpRequest, response=None, error=None) -> bool:
        if request.url.rstrip("/").rsplit("/", 1)[-1] in NOT_RETRIED_BLINDLY:
            return False
        return super()._can_retry(state=state, request=request, response=response, error=error)


def slack_client(token: str, base_url: str = SLACK_API_URL, rate_limit_retries: int = 5) -> WebClient:
    """A WebClient that waits out 429s (Retry-After) and retries dropped connections (but not posts)."""
    return WebClient(
        token=token,
        base_url=base_url,
        retry_handlers=[ConnectionRetryExceptPosts(), RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries)],
    )


def message_metadata(job_id: str, part: int) -> dict:
    """Slack message metadata naming the job and part a message shows (Slack's shape: event_type, event_payload)."""
    return {"event_type": METADATA_EVENT_TYPE, "event_payload": {"job_id": job_id, "part": part}}


def post_once(client: WebClient, *, channel: str, thread_ts: str | None, job_id: str, part: int,
              look_first: bool = False, **body) -> str:
    """chat.postMessage ``body`` as part ``part`` of ``job_id``'s reply, at most once; returns the message's ts.

    A dropped connection or a timeout leaves us not knowing whether Slack took the post, so the thread is read
    (metadata included) before posting again. ``look_first``: the same check before the first post, for a
    caller that may have posted it already (a question handled again after a crash)."""
    metadata = message_metadata(job_id, part)
    if look_first and (found := find_posted(client, channel, thread_ts, metadata)):
        return found
    for _ in range(POST_ATTEMPTS - 1):
        try:
            return client.chat_postMessage(channel=channel, thread_ts=thread_ts, metadata=metadata, **body)["ts"]
        except OSError as err:  # reset, refused, timed out (TimeoutError and urllib's URLError are OSErrors)
            log.warning("posting part %d of %s failed (%s); checking whether Slack took it", part, job_id, err)
            if found := find_posted(client, channel, thread_ts, metadata):
                return found
    return client.chat_postMessage(channel=channel, thread_ts=thread_ts, metadata=metadata, **body)["ts"]


def find_posted(client: WebClient, channel: str, thread_ts: str | None, metadata: dict) -> str | None:
    """The ts of our message carrying ``metadata`` in the thread (or, with no thread, among the channel's newest
    messages), or None. Slack returns message metadata only with ``include_all_metadata``."""
    if thread_ts:
        pages = client.conversations_replies(channel=channel, ts=thread_ts, include_all_metadata=True, limit=200)
    else:
        pages = client.conversations_history(channel=channel, include_all_metadata=True, limit=200)
    for number, page in enumerate(pages):
        for message in page.get("messages") or []:
            if message.get("metadata") == metadata:
                return message.get("ts")
        if number + 1 >= LOOKUP_PAGES:
            break
    return None


class SlackPoster:
    """One job's reply: message 0 is the placeholder, more messages are posted in the thread as needed."""

    def __init__(self, client: WebClient, redis: Redis, keys: RedisKeys, limit: int = MESSAGE_LIMIT):
        self.client, self.redis, self.keys, self.limit = client, redis, keys, limit
        self.index = ReplyIndex(redis, keys)
        self.shown: dict[int, dict] = {}  # message number -> the body (text, blocks) it shows now
        self.unsure: set[int] = set()  # message numbers whose post failed in a way that may have posted them
        # A crashed worker began this answer: it may have posted a part and died before recording it.
        self.restarted = False

    # -- the Poster interface --------------------------------------------------------------------------
    def waiting(self, job: Job, position: int | None) -> None:
        self._edit(job, 0, status_body(f"_{waiting_text(position)}_", job.job_id))

    def update(self, job: Job, text: str) -> None:
        text = hold_back_unfinished(text)
        if text.strip():
            self._show(job, text, running=True)

    def finish(self, job: Job, text: str) -> None:
        count = self._show(job, text, running=False)
        self._remove_parts_after(job, count)

    def fail(self, job: Job, message: str) -> None:
        self._edit(job, 0, warning_body(message))
        self._remove_parts_after(job, 1)

    def restart(self, job: Job) -> None:
        self.restarted = True
        self._edit(job, 0, status_body(f"_{RESTARTING}_", job.job_id))

    # -- messages --------------------------------------------------------------------------------------
    def _show(self, job: Job, text: str, running: bool) -> int:
        """Show ``text`` across as many messages as it needs, the buttons on the last; returns how many."""
        while True:
            parts = message_parts(text, self.limit)
            try:
                for number, part in enumerate(parts):
                    self._edit(job, number, answer_body(part, job.job_id, number == len(parts) - 1, running))
                return len(parts)
            except SlackApiError as err:
                if err.response.get("error") != "msg_too_long" or self.limit <= SMALLEST_LIMIT:
                    raise
                self.limit = max(SMALLEST_LIMIT, self.limit // 2)
                log.warning("Slack said msg_too_long; cutting answers at %d characters", self.limit)

    def _edit(self, job: Job, number: int, body: dict) -> None:
        """Make message ``number`` show ``body`` (see ``slack_messages``), posting it if it is not there yet."""
        if self.shown.get(number) == body:
            return
        ts = self._message_ts(job, number)
        target = job.reply_to
        if ts is None:
            try:
                ts = post_once(self.client, channel=target.channel_id, thread_ts=target.thread_id, job_id=job.job_id,
                               part=number, look_first=self.restarted or number in self.unsure, unfurl_links=False,
                               unfurl_media=False, **as_post(body))
            except (OSError, SlackApiError) as err:
                if isinstance(err, OSError) or err.response.status_code >= 500:
                    self.unsure.add(number)  # Slack may have taken it; deliver() calls again: look before posting
                raise
            self.unsure.discard(number)
            self._remember_part(job, number, ts)
        else:
            self.client.chat_update(channel=target.channel_id, ts=ts, **body)
        self.shown[number] = body

    def _message_ts(self, job: Job, number: int) -> str | None:
        if number == 0 and job.reply_to.placeholder_id:
            return job.reply_to.placeholder_id
        return self._extra_messages(job).get(number)

    def _remember_part(self, job: Job, number: int, ts: str) -> None:
        self._extra_messages(job).remember(number, ts)
        self.index.link_message("slack", job.reply_to.channel_id, ts, job.job_id)

    def _remove_parts_after(self, job: Job, count: int) -> None:
        """Delete messages an earlier, longer attempt at this answer left behind (after a restart)."""
        parts = self._extra_messages(job)
        for number, ts in parts.numbered().items():
            if number < count or (number == 0 and job.reply_to.placeholder_id):
                continue
            try:
                self.client.chat_delete(channel=job.reply_to.channel_id, ts=ts)
            except SlackApiError as err:
                if err.response.get("error") != "message_not_found":
                    raise
            parts.forget(number)
            self.shown.pop(number, None)

    def _extra_messages(self, job: Job) -> ExtraMessages:
        return ExtraMessages(self.redis, self.keys, "slack", job.job_id)
