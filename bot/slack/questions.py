"""What the Slack adapter does with each event: questions become jobs, reactions stop or regenerate answers.

Stop and regenerate are the same code for a ❌/🔁 reaction and for a click on an answer's buttons
(``bot.slack.actions``), so both follow the same rules: only the asker stops, anyone allowed asks again.

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
from bot.slack.waiting import post_placeholder, show_busy, show_queued, show_stopped
from worker.ops import metrics
from worker.posters.base import platform_down
from worker.posters.slack import post_once
from worker.queue.job import Attachment, Job, ReplyTarget, Requester
from worker.queue.job_queue import Busy, DuplicateJob, JobQueue
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
    # DM threads (Slack's assistant view) answer by native streaming, their wait shown as the thread's status
    native_streaming: bool = True


@dataclass(frozen=True)
class Gesture:
    """Someone's ❌/🔁 reaction on an answer, or click on its Stop/Regenerate button: who, and which one (``kind``
    and ``ts``, the reaction's event_ts or the click's action_ts, name it, so that it is handled once)."""
    user: str
    kind: str  # "reaction" or "button"
    ts: str


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
        job = self.index.job(job_id) if job_id else None
        if job is None or not isinstance(event.get("user"), str) or not event["user"]:
            return  # not one of our answers (or no longer known); or a broken payload: no one reacted
        gesture = Gesture(event["user"], "reaction", str(event.get("event_ts")))
        handler = self.stop if name in CANCEL_REACTIONS else self.regenerate
        self.guarded(handler, gesture, client, job, context, where=lambda: answer_place(job, item["ts"]))

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
        target = self.reply_target(channel, thread_ts, in_assistant_thread=is_dm and bool(event.get("thread_ts")),
                                   team_id=asker_team(event, context))
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
        self.submit(client, job_id, turns, requester, target, self.job_context(channel, attachments, notes),
                    look_first=bool(context.get(RECOVERED)))

    def _history(self, client: WebClient, event: dict, thread_ts: str | None, is_dm: bool) -> list[dict]:
        keep = self.options.history_messages
        if thread_ts and thread_ts != event["ts"]:
            return thread_messages(client, event["channel"], thread_ts, event["ts"], keep)
        if is_dm:
            return dm_messages(client, event["channel"], event["ts"], keep)
        return [event]

    def reply_target(self, channel: str, thread_ts: str | None, in_assistant_thread: bool = False,
                     team_id: str | None = None) -> ReplyTarget:
        """Where a question's answer goes: the thread; in an assistant thread (a DM thread, with native
        streaming on) natively streamed for the asker's team, with no placeholder."""
        if in_assistant_thread and self.options.native_streaming:
            return ReplyTarget(platform="slack", channel_id=channel, thread_id=thread_ts, assistant=True,
                               team_id=team_id)
        return ReplyTarget(platform="slack", channel_id=channel, thread_id=thread_ts)

    def job_context(self, channel: str, attachments: list[Attachment], notes: list[str]) -> dict:
        """The job's fields besides the conversation: the question's files, and the channel's rule."""
        rule = self.rules.current().for_slack(channel)
        return {"attachments": tuple(attachments), "notes": tuple(notes), "system_prompt": rule.system_prompt,
                "overrides": rule.overrides()}

    def submit(self, client: WebClient, job_id: str, turns, requester: Requester, target: ReplyTarget,
               job_context: dict, look_first: bool = False) -> None:
        """Queue the job that answers into ``target``, showing that it waits (``bot.slack.waiting``): into a
        placeholder posted first, or, in an assistant thread, under the thread's loading status. ``look_first``:
        the question is handled again (a crash or Slack outage cut the first try short), so its placeholder may
        be there already: it is used, and a job already queued keeps it."""
        if not target.assistant:
            placeholder = post_placeholder(client, target, job_id, look_first)
            target = target.model_copy(update={"placeholder_id": placeholder})
        job = Job(job_id=job_id, turns=turns, requester=requester, reply_to=target, **job_context)
        self.index.remember_question(job)
        if target.placeholder_id:
            self.index.link_message("slack", target.channel_id, target.placeholder_id, job_id)
        try:
            position = self.queue.enqueue(job).position
        except Busy as err:
            metrics.BUSY.labels("slack", err.reason).inc()
            show_busy(client, target, job_id, err.message, look_first)
            return
        except DuplicateJob:
            if target.placeholder_id and not look_first:  # handled again, the job queued answers into this one
                client.chat_delete(channel=target.channel_id, ts=target.placeholder_id)
            return
        metrics.ENQUEUED.labels("slack").inc()
        show_queued(client, self.redis, self.queue.keys, target, job_id, position)

    # -- stop and regenerate (reactions and buttons alike) ----------------------------------------------
    def stop(self, gesture: Gesture, client: WebClient, job: Job, context: dict) -> None:
        """Only the asker may stop an answer; one still queued is removed and says so, a running one stops
        (the worker sees the cancel flag)."""
        target = job.reply_to
        if gesture.user != job.requester.user_id:
            client.chat_postEphemeral(channel=target.channel_id, user=gesture.user, thread_ts=target.thread_id,
                                      text=ONLY_ASKER_CAN_STOP)
            return
        if self.queue.cancel(job.job_id) == "removed":
            show_stopped(client, target, job.job_id)

    def regenerate(self, gesture: Gesture, client: WebClient, job: Job, context: dict) -> None:
        """Ask the answer's question again into the same thread, on behalf of whoever reacted or clicked (the
        allowlist applies to them), with the original's files and rule."""
        if not claim_once(self.redis, self.queue.keys, f"{gesture.kind}:{gesture.ts}:{job.job_id}",
                          context.get(EVENT_ID)):
            return
        metrics.QUESTIONS.labels("slack").inc()  # the same question, asked again
        old = job.reply_to
        if refusal := self.allowlist.refusal(channel_ids={old.channel_id}, user_id=gesture.user):
            metrics.NOT_ALLOWED.labels("slack").inc()
            client.chat_postEphemeral(channel=old.channel_id, user=gesture.user, thread_ts=old.thread_id,
                                      text=refusal)
            return
        new_id = self.queue.keys.job_id("slack", f"again-{old.channel_id}-{gesture.ts}-{job.job_id}")
        target = self.reply_target(old.channel_id, old.thread_id, old.assistant, old.team_id)
        self.submit(client, new_id, job.turns, Requester(platform="slack", user_id=gesture.user), target,
                    {name: getattr(job, name) for name in JOB_CONTEXT}, look_first=bool(context.get(RECOVERED)))

    # -- failures --------------------------------------------------------------------------------------
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


def answer_place(job: Job, message_ts: str) -> Place:
    """Where a failure about an answer (a reaction on it, a click on its buttons) goes: the answer's thread."""
    return job.reply_to.channel_id, job.reply_to.thread_id or message_ts


def asker_team(event: dict, context: dict) -> str | None:
    """The workspace of the person who wrote a message (Slack Connect: maybe not the app's), which Slack's
    streaming wants with the recipient; the app's own workspace when the event does not say."""
    for team in (event.get("user_team"), event.get("team"), context.get("team_id")):
        if isinstance(team, str) and team:
            return team
    return None


def question_place(event: dict) -> Place:
    """A question's failure notice goes into its thread (a new thread under it when it had none)."""
    return event.get("channel"), event.get("thread_ts") or event.get("ts")
