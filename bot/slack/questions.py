"""What the Slack adapter does with each event: questions become jobs, reactions cancel or regenerate.

Bolt calls these listeners after it has acknowledged the event (Slack wants that within 3 s), so the Slack
API calls and the enqueue here may take their time; the event is safe in the inbox (``bot.slack.inbox``)
meanwhile. Every question is claimed once by its channel and message ts, which drops the second event Slack
sends for a message that mentions the bot inside a thread (the same event handled again after a crash keeps its
claim). Bad input gets a clear reply in the thread. Nothing here raises, except an error that means Slack's Web
API is down: the inbox then keeps the event and handles it again later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from slack_sdk import WebClient

from bot.access import Allowlist
from bot.channel_config import ChannelRules
from bot.conversation import EMPTY_QUESTION, ONLY_ASKER_CAN_STOP, clean_text, is_blank
from bot.slack.files import SlackFiles, has_files
from bot.slack.history import (
    USER_MESSAGE_SUBTYPES,
    dm_messages,
    message_text,
    plain_text,
    thread_messages,
    turns_from_messages,
)
from bot.slack.inbox import EVENT_ID, RECOVERED, claim_once
from worker.ops import metrics
from worker.posters.base import platform_down
from worker.posters.slack import post_once
from worker.posters.slack_text import escape
from worker.posters.status_text import STOPPED_BEFORE_START, waiting_text
from worker.queue.job import Attachment, Job, ReplyTarget, Requester
from worker.queue.job_queue import Busy, DuplicateJob, JobQueue
from worker.queue.positions import show_unless_started
from worker.queue.reply_index import ReplyIndex
from worker.settings import DEFAULT_HISTORY_MESSAGES, DEFAULT_SLACK_FOLLOWUPS

log = logging.getLogger(__name__)

CANCEL_REACTIONS = {"x", "heavy_multiplication_x", "no_entry_sign", "octagonal_sign"}
REGENERATE_REACTIONS = {"repeat", "arrows_counterclockwise", "arrows_clockwise"}
# What a job carries besides the conversation; an answer asked again keeps the original's.
JOB_CONTEXT = ("attachments", "notes", "system_prompt", "overrides")
Place = tuple[str | None, str | None]  # (channel, thread ts) a failure notice goes to


@dataclass(frozen=True)
class SlackOptions:
    # "any": every message in a bot thread continues it; "mention": only mentions
    followups: str = DEFAULT_SLACK_FOLLOWUPS
    history_messages: int = DEFAULT_HISTORY_MESSAGES


class SlackQuestions:
    def __init__(self, queue: JobQueue, redis: Redis, allowlist: Allowlist, files: SlackFiles,
                 rules: ChannelRules, options: SlackOptions = SlackOptions()):
        self.queue, self.redis, self.allowlist, self.options = queue, redis, allowlist, options
        self.files, self.rules = files, rules
        self.index = ReplyIndex(redis, queue.keys)

    # -- bolt listeners (arguments by name, as bolt passes them) ---------------------------------------
    def on_mention(self, event: dict, client: WebClient, context: dict) -> None:
        self.guarded(self._question, event, client, context, where=lambda: question_place(event))

    def on_message(self, event: dict, client: WebClient, context: dict) -> None:
        if event.get("subtype") not in USER_MESSAGE_SUBTYPES or event.get("bot_id"):
            return  # edits, deletions, joins, other bots (our own messages bolt already drops)
        bot_user_id = context.get("bot_user_id")
        if event.get("channel_type") == "im":
            self.guarded(self._question, event, client, context, where=lambda: question_place(event))
            return
        thread_ts = event.get("thread_ts")
        if not thread_ts or (bot_user_id and f"<@{bot_user_id}" in message_text(event)):
            return  # top-level chatter; or a mention, which the app_mention listener answers
        if self.options.followups == "any" and self.index.is_bot_thread("slack", str(event.get("channel")), thread_ts):
            self.guarded(self._question, event, client, context, where=lambda: question_place(event))

    def on_reaction(self, event: dict, client: WebClient, context: dict) -> None:
        name, item = str(event.get("reaction") or "").split("::")[0], event.get("item")
        if (not isinstance(item, dict) or item.get("type") != "message"
                or name not in CANCEL_REACTIONS | REGENERATE_REACTIONS):
            return
        if not isinstance(item.get("channel"), str) or not isinstance(item.get("ts"), str):
            return  # a broken payload: no message it could be about
        job_id = self.index.job_id_for_message("slack", item["channel"], item["ts"])
        if job_id is None:
            return  # not one of our answers
        handler = self._cancel if name in CANCEL_REACTIONS else self._regenerate
        self.guarded(handler, event, client, job_id, context, where=lambda: self._answer_place(item, job_id))

    # -- questions -------------------------------------------------------------------------------------
    def _question(self, event: dict, client: WebClient, context: dict) -> None:
        channel, ts, user = event.get("channel"), event.get("ts"), event.get("user")
        if not all(isinstance(value, str) and value for value in (channel, ts, user)):
            log.warning("ignoring a Slack message event without a channel, ts or user")
            return  # nowhere to answer, or no one to answer (Slack always sends these; a broken payload)
        if not claim_once(self.redis, self.queue.keys, f"{channel}:{ts}", context.get(EVENT_ID)):
            return  # the second event for the same message
        metrics.QUESTIONS.labels("slack").inc()
        is_dm = event.get("channel_type") == "im" or channel.startswith("D")
        thread_ts = event.get("thread_ts") or (None if is_dm else ts)
        if refusal := self.allowlist.refusal(channel_ids={channel}, user_id=user):
            metrics.NOT_ALLOWED.labels("slack").inc()
            client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts, text=refusal)
            return
        bot_user_id, bot_id = context.get("bot_user_id"), context.get("bot_id")
        job_id = self.queue.keys.job_id("slack", f"{channel}-{ts}")
        if is_blank(clean_text(plain_text(message_text(event), bot_user_id))) and not has_files(event):
            post_once(client, channel=channel, thread_ts=thread_ts or ts, job_id=job_id, part=0,
                      look_first=bool(context.get(RECOVERED)), text=EMPTY_QUESTION)
            return
        turns = turns_from_messages(self._history(client, event, thread_ts, is_dm), bot_user_id, bot_id)
        if not turns:  # history unreadable as a conversation: answer the message alone
            turns = turns_from_messages([event], bot_user_id, bot_id)
        attachments, notes = self.files.read(event)  # bolt runs us after the ack: downloads may take their time
        requester = Requester(platform="slack", user_id=user)
        self.submit(client, job_id, turns, requester, channel, thread_ts, self.job_context(channel, attachments, notes),
                    look_first=bool(context.get(RECOVERED)))

    def _history(self, client: WebClient, event: dict, thread_ts: str | None, is_dm: bool) -> list[dict]:
        keep = self.options.history_messages
        if thread_ts and thread_ts != event["ts"]:
            return thread_messages(client, event["channel"], thread_ts, event["ts"], keep)
        if is_dm:
            return dm_messages(client, event["channel"], event["ts"], keep)
        return [event]

    def job_context(self, channel: str, attachments: list[Attachment], notes: list[str]) -> dict:
        """The job's fields besides the conversation: the question's files, and the channel's rule."""
        rule = self.rules.current().for_slack(channel)
        return {"attachments": tuple(attachments), "notes": tuple(notes), "system_prompt": rule.system_prompt,
                "overrides": rule.overrides()}

    def submit(self, client: WebClient, job_id: str, turns, requester: Requester, channel: str,
               thread_ts: str | None, job_context: dict, look_first: bool = False) -> None:
        """Post the placeholder in the thread, then queue the job that will answer into it. ``look_first``: the
        question is handled again (a crash or Slack outage cut the first try short), so its placeholder may be
        there already: it is used, and a job already queued keeps it."""
        placeholder = {"ts": post_once(client, channel=channel, thread_ts=thread_ts, job_id=job_id, part=0,
                                       look_first=look_first, text=f"_{waiting_text(None)}_")}
        job = Job(
            job_id=job_id, turns=turns, requester=requester,
            reply_to=ReplyTarget(platform="slack", channel_id=channel, thread_id=thread_ts,
                                 placeholder_id=placeholder["ts"]),
            **job_context,
        )
        self.index.remember_question(job)
        self.index.link_message("slack", channel, placeholder["ts"], job_id)
        try:
            position = self.queue.enqueue(job).position
        except Busy as err:
            metrics.BUSY.labels("slack", err.reason).inc()
            client.chat_update(channel=channel, ts=placeholder["ts"], text=f":hourglass: {escape(err.message)}",
                               blocks=[])
            return
        except DuplicateJob:
            if not look_first:  # handled again, the job already queued answers into this very placeholder
                client.chat_delete(channel=channel, ts=placeholder["ts"])
            return
        metrics.ENQUEUED.labels("slack").inc()
        if position > 1:
            show_unless_started(self.redis, self.queue.keys, job_id, lambda: client.chat_update(
                channel=channel, ts=placeholder["ts"], text=f"_{waiting_text(position)}_", blocks=[]))

    # -- reactions -------------------------------------------------------------------------------------
    def _cancel(self, event: dict, client: WebClient, job_id: str, context: dict) -> None:
        job = self.index.job(job_id)
        if job is None:
            return
        user = event.get("user")
        if not user:
            return  # a broken payload: no one reacted
        if user != job.requester.user_id:
            client.chat_postEphemeral(channel=job.reply_to.channel_id, user=user,
                                      thread_ts=job.reply_to.thread_id,
                                      text=ONLY_ASKER_CAN_STOP)
            return
        if self.queue.cancel(job_id) == "removed":  # blocks=[]: a requeued job's placeholder may show an answer
            client.chat_update(channel=job.reply_to.channel_id, ts=job.reply_to.placeholder_id,
                               text=f"_{STOPPED_BEFORE_START}_", blocks=[])

    def _regenerate(self, event: dict, client: WebClient, job_id: str, context: dict) -> None:
        job, user = self.index.job(job_id), event.get("user")
        if job is None or not user or not claim_once(self.redis, self.queue.keys,
                                                     f"reaction:{event.get('event_ts')}:{job_id}",
                                                     context.get(EVENT_ID)):
            return
        metrics.QUESTIONS.labels("slack").inc()  # the same question, asked again
        target = job.reply_to
        if refusal := self.allowlist.refusal(channel_ids={target.channel_id}, user_id=user):
            metrics.NOT_ALLOWED.labels("slack").inc()
            client.chat_postEphemeral(channel=target.channel_id, user=user, thread_ts=target.thread_id, text=refusal)
            return
        new_id = self.queue.keys.job_id("slack", f"again-{target.channel_id}-{event.get('event_ts')}-{job_id}")
        self.submit(client, new_id, job.turns, Requester(platform="slack", user_id=user), target.channel_id,
                    target.thread_id, {name: getattr(job, name) for name in JOB_CONTEXT},
                    look_first=bool(context.get(RECOVERED)))

    # -- failures --------------------------------------------------------------------------------------
    def _answer_place(self, item: dict, job_id: str) -> Place:
        """Where a failure about a reaction on an answer goes: the answer's thread (the reaction event has
        neither ``ts`` nor ``thread_ts`` of its own)."""
        try:
            job = self.index.job(job_id)
        except Exception:  # the failure being reported may be Redis itself
            job = None
        return item["channel"], (job.reply_to.thread_id if job else None) or item["ts"]

    def guarded(self, handler, event: dict, client: WebClient, *rest, where: Callable[[], Place],
                retry_when_down: bool = True) -> None:
        """Run a listener; on a failure tell the user in the thread ``where`` names instead of failing silently.
        ``retry_when_down``: Slack's Web API being down is raised instead, for the inbox to try again later."""
        try:
            handler(event, client, *rest)
        except Exception as err:
            if retry_when_down and platform_down(err):
                raise
            log.exception("could not handle a Slack event")
            channel, thread_ts = where()
            if not channel:
                return
            text = (f":warning: Sorry, I couldn't take this request ({type(err).__name__}). "
                    "Please try again in a minute.")
            try:
                client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text)
            except Exception:
                log.warning("could not tell the user about the failure", exc_info=True)


def question_place(event: dict) -> Place:
    """A question's failure notice goes into its thread (a new thread under it when it had none)."""
    return event.get("channel"), event.get("thread_ts") or event.get("ts")
