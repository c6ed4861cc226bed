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

from worker.posters.base import platform_down
from worker.posters.extra_messages import ExtraMessages
from worker.posters.markdown_spans import hold_back_unfinished
from worker.posters.slack_messages import answer_body, as_post, status_body, warning_body
from worker.posters.slack_status import STATUS_REFRESH_S, clear_status, show_status
from worker.posters.slack_stream import (
    NativeStream,
    StoppedByUser,
    StreamEnded,
    find_orphan_stream,
    stop_stream,
    streamable,
)
from worker.posters.slack_text import message_parts
from worker.posters.status_text import RESTARTING, waiting_text
from worker.queue.job_queue import request_stop
from worker.queue.keys import RedisKeys
from worker.queue.reply_index import ReplyIndex
from worker.settings import SLACK_API_URL

if TYPE_CHECKING:
    from worker.queue.job import Job

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 12_000  # the documented limit of markdown (markdown_text or blocks), counted by slack_size
SMALLEST_LIMIT = 500
METADATA_EVENT_TYPE = "xwinbot_message"  # the event_type of the metadata on every message we post
POST_ATTEMPTS = 3  # posts tried by post_once while the connection drops and the message is not there
LOOKUP_PAGES = 10  # pages of 200 messages post_once reads looking for a post that may have been taken


# Methods that add to what people see: Slack may have taken one before the connection broke, and a blind retry
# would show a message (or a streamed piece) twice. Their callers check instead (post_once, NativeStream).
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
    """One job's reply: message 0 is the placeholder (in the assistant view: the native stream), more messages are
    posted in the thread as needed."""

    def __init__(self, client: WebClient, redis: Redis, keys: RedisKeys, limit: int = MESSAGE_LIMIT,
                 native_streaming: bool = True, status_refresh_s: float = STATUS_REFRESH_S):
        self.client, self.redis, self.keys, self.limit = client, redis, keys, limit
        self.native_streaming, self.refresh_every_s = native_streaming, status_refresh_s
        self.index = ReplyIndex(redis, keys)
        self.shown: dict[int, dict] = {}  # message number -> the body (text, blocks) it shows now
        self.unsure: set[int] = set()  # message numbers whose post failed in a way that may have posted them
        # A crashed worker began this answer: it may have posted a part and died before recording it.
        self.restarted = False
        # The assistant view (see slack_stream): the stream while it takes text; whether the answer left it for
        # chat.update; whether a start's connection dropped (Slack may have started it); whether the person stopped
        # it; whether this poster set the thread's status and posted nothing since.
        self.stream: NativeStream | None = None
        self.editing = False
        self.unsure_start = False
        self.stopped_by_user = False
        self.status_shown = False

    # -- the Poster interface --------------------------------------------------------------------------
    def waiting(self, job: Job, position: int | None) -> None:
        if self._native(job):
            show_status(self.client, job.reply_to, position)
            self.status_shown = True
        else:
            self._edit(job, 0, status_body(f"_{waiting_text(position)}_", job.job_id))

    def update(self, job: Job, text: str) -> None:
        text = hold_back_unfinished(text)
        if not text.strip() or self.stopped_by_user:
            return
        if self._native(job) and not self.editing:
            self._stream(job, text)
        else:
            self._end_stream(job)  # left open when stopping it failed (Slack down): stopped before it is edited
            self._show(job, text, running=True)

    def finish(self, job: Job, text: str) -> None:
        self._end_stream(job)
        count = self._show(job, text, running=False)
        self._remove_parts_after(job, count)
        self._clear_status(job)

    def fail(self, job: Job, message: str) -> None:
        self._end_stream(job)
        self._edit(job, 0, warning_body(message))
        self._remove_parts_after(job, 1)
        self._clear_status(job)

    def restart(self, job: Job) -> None:
        """A crashed worker began this answer: what it showed makes way for this attempt's, in the same message."""
        self.restarted = True
        if self._native(job):
            ts = self._extra_messages(job).get(0) or self._adopt_orphan(job)
            if ts is None:
                return  # it showed nothing (or nothing we can find): this attempt streams as usual
            stop_stream(self.client, job.reply_to.channel_id, ts, message_metadata(job.job_id, 0))
            self.editing = True
        self._edit(job, 0, status_body(f"_{RESTARTING}_", job.job_id))

    def status_refresh_s(self, job: Job) -> float | None:
        """How often a queued job's waiting notice must be shown again to stay (None: it stays)."""
        return self.refresh_every_s if self._native(job) else None

    # -- the assistant view: native streaming ----------------------------------------------------------
    def _native(self, job: Job) -> bool:
        """Whether ``job`` is answered the assistant view's way: status line and native stream, no placeholder."""
        target = job.reply_to
        return self.native_streaming and target.assistant and not target.placeholder_id and bool(target.thread_id)

    def _stream(self, job: Job, text: str) -> None:
        """Show ``text`` through the native stream: start it or append what is new, else leave it for chat.update."""
        if self.unsure_start and self._adopt_unsure_start(job):
            return self._leave_stream(job, text, "a dropped chat.startStream had started the stream")
        markdown = streamable(text, self.limit)
        if markdown is None:
            return self._leave_stream(job, text, "the answer outgrew one message")
        if self.stream is not None and not markdown.startswith(self.stream.sent):
            return self._leave_stream(job, text, "the answer no longer extends what was streamed")
        try:
            if self.stream is None:
                self._start_stream(job, text, markdown)
            else:
                self.stream.extend_to(markdown)
        except StreamEnded as ended:
            self._leave_stream(job, text, str(ended))
        except StoppedByUser:
            log.info("the asker stopped job %s in Slack; asking its worker to stop", job.job_id)
            self.stopped_by_user = True
            request_stop(self.redis, self.keys, job.job_id)

    def _start_stream(self, job: Job, text: str, markdown: str) -> None:
        if not markdown:
            return  # not a whole word yet
        try:
            self.stream = NativeStream.start(self.client, job, markdown)
        except OSError:
            self.unsure_start = True  # the next update looks for it before starting another
            raise
        except SlackApiError as err:
            if platform_down(err):
                raise
            return self._leave_stream(job, text, f"Slack would not start a stream ({err.response.get('error')})")
        self.status_shown = False  # Slack removes the status when the app posts in the thread
        self._remember_part(job, 0, self.stream.ts)

    def _adopt_unsure_start(self, job: Job) -> bool:
        """After a start whose connection dropped: take the stream Slack started, if it did; True if found."""
        ts = self._adopt_orphan(job)
        self.unsure_start = False
        if ts:
            self.stream = NativeStream(self.client, job.reply_to.channel_id, ts, sent="")
        return ts is not None

    def _adopt_orphan(self, job: Job) -> str | None:
        ts = find_orphan_stream(self.client, self.index, job)
        if ts:
            log.warning("job %s: found its stream %s that was never recorded; continuing in it", job.job_id, ts)
            self._remember_part(job, 0, ts)
        return ts

    def _leave_stream(self, job: Job, text: str, why: str) -> None:
        log.info("job %s: %s; the answer goes on with chat.update", job.job_id, why)
        self.editing = True  # even if stopping the stream fails now: the next update stops it first
        self._end_stream(job)
        self._show(job, text, running=True)

    def _end_stream(self, job: Job) -> None:
        """Stop the stream, if one is open, with our metadata: its message can be edited from then on."""
        if self.stream is not None:
            stop_stream(self.client, self.stream.channel, self.stream.ts, message_metadata(job.job_id, 0))
            self.stream = None

    def _clear_status(self, job: Job) -> None:
        """Remove the thread's status if this answer never posted (Slack removes it when the app posts)."""
        if self.status_shown:
            clear_status(self.client, job.reply_to)
            self.status_shown = False

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
            self.status_shown = False  # Slack removes a thread's status when the app posts in it
            self._remember_part(job, number, ts)
        else:  # with our metadata: a stream Slack ended before we stopped it has none yet
            self.client.chat_update(channel=target.channel_id, ts=ts, metadata=message_metadata(job.job_id, number),
                                    **body)
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
