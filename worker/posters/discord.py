"""The Discord reply poster: streams an answer into the placeholder the adapter posted, by editing it.

Public answers live in a thread (or DM) as the bot's own messages, edited over REST with the bot token, so
they never depend on the interaction token's 15 minutes. Private answers (``/ask private:True``) are the
interaction's ephemeral response, edited through the interaction webhook; once its token has expired the
answer moves to a direct message with the person who asked. An answer longer than 2,000 characters goes on
in further messages (cut by ``split_message``; code blocks closed and reopened; their ids kept by
``ExtraMessages`` for retried jobs). Every message pings no one.

Discord renders the model's Markdown except tables, which become aligned code blocks (``markdown_tables``); a
streamed edit holds back a link or code span still being written, and a code block still open is closed.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from redis import Redis

from worker.posters.discord_controls import NO_PINGS, answer_buttons
from worker.posters.discord_rest import ORIGINAL, DiscordError, DiscordRest, message_nonce
from worker.posters.extra_messages import ExtraMessages
from worker.posters.markdown_spans import close_open_fence, hold_back_unfinished
from worker.posters.markdown_tables import tables_to_code
from worker.posters.split import split_message
from worker.posters.status_text import RESTARTING, waiting_text
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import as_text
from worker.queue.reply_index import TTL_S

if TYPE_CHECKING:
    from worker.queue.job import Job

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
EPHEMERAL = 64
EXPIRED_TOKEN = {401, 404}  # 50027 Invalid Webhook Token, 10015 Unknown Webhook


def message_parts(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The content of each message that shows ``text``: tables rewritten, code blocks closed, cut to ``limit``."""
    return split_message(close_open_fence(tables_to_code(text)), limit)


class DiscordPoster:
    """One job's reply: message 0 is the placeholder; more messages follow it in the same place."""

    def __init__(self, rest: DiscordRest, redis: Redis, keys: RedisKeys, limit: int = MESSAGE_LIMIT):
        self.rest, self.redis, self.keys, self.limit = rest, redis, keys, limit
        self.shown: dict[int, tuple[str, str]] = {}  # message number -> (content, components) it shows now

    # -- the Poster interface --------------------------------------------------------------------------
    def waiting(self, job: Job, position: int | None) -> None:
        self._edit(job, 0, waiting_text(position), answer_buttons(job.job_id, running=True))

    def update(self, job: Job, text: str) -> None:
        text = hold_back_unfinished(text)
        if text.strip():
            self._show(job, text, running=True)

    def finish(self, job: Job, text: str) -> None:
        self._remove_parts_after(job, self._show(job, text, running=False))

    def fail(self, job: Job, message: str) -> None:
        self._edit(job, 0, f"⚠️ {message}", [])
        self._remove_parts_after(job, 1)

    def restart(self, job: Job) -> None:
        self._edit(job, 0, RESTARTING, answer_buttons(job.job_id, running=True))

    # -- messages --------------------------------------------------------------------------------------
    def _show(self, job: Job, text: str, running: bool) -> int:
        parts = message_parts(text, self.limit)
        for number, part in enumerate(parts):
            last = number == len(parts) - 1
            self._edit(job, number, part, answer_buttons(job.job_id, running) if last else [])
        return len(parts)

    def _edit(self, job: Job, number: int, content: str, components: list[dict]) -> None:
        content = content if content.strip() else "…"  # Discord refuses an empty message
        state = (content, json.dumps(components))
        if self.shown.get(number) == state:
            return
        payload = {"content": content, "allowed_mentions": NO_PINGS, "components": components}
        try:
            self._put(job, number, payload)
        except DiscordError as err:
            if not (self._uses_interaction(job) and err.status in EXPIRED_TOKEN):
                raise
            log.info("interaction token of job %s expired: continuing in a direct message", job.job_id)
            self._move_to_dm(job)
            self._put(job, number, payload)
        self.shown[number] = state

    def _put(self, job: Job, number: int, payload: dict) -> None:
        message_id = self._message_id(job, number)
        target = job.reply_to
        if self._uses_interaction(job):
            if message_id is None:
                sent = self.rest.send_followup(target.application_id, target.interaction_token,
                                               dict(payload, flags=EPHEMERAL))
                self._remember_part(job, number, sent["id"])
            else:
                self.rest.edit_interaction_message(target.application_id, target.interaction_token, message_id,
                                                   payload)
            return
        channel_id = self._channel_id(job)
        if message_id is None:
            nonce = message_nonce(job.job_id, channel_id, str(number))  # a retried send returns the same message
            self._remember_part(job, number, self.rest.send(channel_id, payload, nonce)["id"])
        else:
            self.rest.edit(channel_id, message_id, payload)

    # -- where the messages are ------------------------------------------------------------------------
    def _uses_interaction(self, job: Job) -> bool:
        return job.reply_to.placeholder_id == ORIGINAL and not self._dm_channel(job)

    def _channel_id(self, job: Job) -> str:
        return self._dm_channel(job) or job.reply_to.thread_id or job.reply_to.channel_id

    def _dm_channel(self, job: Job) -> str | None:
        return as_text(self.redis.get(self.keys.discord_dm(job.job_id)))

    def _move_to_dm(self, job: Job) -> None:
        dm = self.rest.open_dm(job.requester.user_id)
        self.redis.set(self.keys.discord_dm(job.job_id), dm, ex=TTL_S)
        self._extra_messages(job).clear()
        self.shown.clear()

    def _message_id(self, job: Job, number: int) -> str | None:
        if number == 0 and job.reply_to.placeholder_id and not self._dm_channel(job):
            return job.reply_to.placeholder_id
        return self._extra_messages(job).get(number)

    def _remember_part(self, job: Job, number: int, message_id: str) -> None:
        self._extra_messages(job).remember(number, message_id)

    def _remove_parts_after(self, job: Job, count: int) -> None:
        """Delete messages an earlier, longer attempt at this answer left behind (after a restart)."""
        parts = self._extra_messages(job)
        for number, message_id in parts.numbered().items():
            if number < count:
                continue
            try:
                if self._uses_interaction(job):
                    target = job.reply_to
                    self.rest.delete_interaction_message(target.application_id, target.interaction_token, message_id)
                else:
                    self.rest.delete(self._channel_id(job), message_id)
            except DiscordError as err:
                if err.status != 404:
                    raise
            parts.forget(number)
            self.shown.pop(number, None)

    def _extra_messages(self, job: Job) -> ExtraMessages:
        return ExtraMessages(self.redis, self.keys, "discord", job.job_id)
