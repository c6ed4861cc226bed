"""What the Discord adapter does with a question: a placeholder with buttons, a job, the queue.

Every place a question comes from (``/ask``, a mention, a follow-up in a bot thread, Regenerate) ends in
``submit``. Every Redis call goes through ``RedisCalls`` (its own thread pool), so the gateway's event loop never
waits on Redis; during a Redis outage the placeholder says the question waits for the queue, and it is queued
once Redis is back. The placeholder carries a nonce derived from the job, so posting it again (a retried send, a
replayed event) returns the same message. Every message the bot sends pings no one (the client's
``allowed_mentions``; the worker's poster sets the same).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import discord
from redis import Redis

from bot.access import Allowlist
from bot.attachments import FileLimits, RemoteFile, read_files
from bot.channel_config import NO_RULE, ChannelRule, ChannelRules
from bot.conversation import ONLY_ASKER_CAN_STOP
from bot.discord.buttons import answer_controls
from bot.discord.redis_calls import UNREACHABLE, RedisCalls
from worker.ops import metrics
from worker.posters.discord_rest import ORIGINAL, message_nonce
from worker.posters.status_text import STOPPED_BEFORE_START, waiting_text
from worker.queue.job import MAX_ATTACHMENTS, Attachment, GenerationOverrides, Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import Busy, DuplicateJob, JobQueue
from worker.queue.positions import show_unless_started
from worker.queue.reply_index import ReplyIndex
from worker.settings import DEFAULT_HISTORY_MESSAGES, Settings

log = logging.getLogger(__name__)

WAITING_FOR_QUEUE = "⏳ waiting for the queue: it cannot be reached right now. Your question is kept and goes in as " \
                    "soon as the queue is back."
QUEUE_UNREACHABLE = "The queue cannot be reached right now; please try again in a minute."


@dataclass(frozen=True)
class DiscordOptions:
    message_content: bool = False  # the privileged intent is on: any message in a bot thread continues it
    history_messages: int = DEFAULT_HISTORY_MESSAGES


@dataclass(frozen=True)
class Context:
    """What comes with a question besides its turns: its files' text, what could not be read, the channel's rule."""

    attachments: tuple[Attachment, ...] = ()
    notes: tuple[str, ...] = ()
    rule: ChannelRule = NO_RULE


def remote_file(attachment: discord.Attachment) -> RemoteFile:
    """No auth header: Discord's attachment URLs are signed CDN links anyone holding them may fetch."""
    return RemoteFile(attachment.filename, attachment.url, attachment.size, attachment.content_type)


@dataclass
class Placeholder:
    """Where the answer will appear: a bot message in a channel/thread, or an interaction's response."""

    channel_id: int
    message_id: str
    edit: object  # async (content=..., view=...) -> None
    interaction: discord.Interaction | None = None


class DiscordQuestions:
    def __init__(self, queue: JobQueue, redis: Redis, allowlist: Allowlist, options: DiscordOptions = DiscordOptions(),
                 rules: ChannelRules | None = None, file_limits: FileLimits | None = None):
        self.queue, self.redis, self.allowlist, self.options = queue, redis, allowlist, options
        self.index = ReplyIndex(redis, queue.keys)
        self.calls = RedisCalls()
        self.rules = rules or ChannelRules(None)
        self.file_limits = file_limits or FileLimits.from_settings(Settings.model_construct())  # the defaults

    # -- who may ask -----------------------------------------------------------------------------------
    def count_and_check(self, user: discord.abc.User, channel: discord.abc.Messageable | None,
                        guild_id: int | None) -> str | None:
        """Count a question received and check who asks it: None when ``user`` may ask here, else the refusal
        (counted too). Every question (``/ask``, mention, follow-up, Regenerate) comes through here first."""
        metrics.QUESTIONS.labels("discord").inc()
        refusal = self.refusal(user, channel, guild_id)
        if refusal:
            metrics.NOT_ALLOWED.labels("discord").inc()
        return refusal

    def refusal(self, user: discord.abc.User, channel: discord.abc.Messageable | None,
                guild_id: int | None) -> str | None:
        """None when ``user`` may ask here, else why not (the allowlist; nothing counted)."""
        channel_ids = set()
        if channel is not None:
            channel_ids.add(getattr(channel, "id", None))
            channel_ids.add(getattr(channel, "parent_id", None))  # a thread is allowed where its channel is
        roles = [role.id for role in getattr(user, "roles", [])]
        return self.allowlist.refusal(channel_ids=channel_ids - {None}, user_id=user.id, server_id=guild_id,
                                      role_ids=roles)

    async def claim(self, source_id: str, place: Placeholder | None = None) -> bool:
        """True the first time a message/interaction is seen (the gateway may replay events after a resume).
        Waits for Redis as long as it takes; ``place`` then says so. A replay that finds the question claimed
        posted no second placeholder: it carries the same nonce, so Discord returned the first one."""
        on_wait = self.tell_waiting(place) if place is not None else None
        return await self.calls.until_reachable(self.index.claim, "discord", source_id, on_wait=on_wait)

    @staticmethod
    def tell_waiting(place: Placeholder):
        async def tell() -> None:
            await place.edit(content=WAITING_FOR_QUEUE)

        return tell

    def job_id(self, source_id: str) -> str:
        """This deployment's job id for a Discord question, from ``ask-<interaction>``, ``msg-<message>`` or
        ``again-<interaction>``: ``discord-ask-<interaction>`` …, after the namespace outside the default deployment."""
        return self.queue.keys.job_id("discord", source_id)

    # -- what comes with a question ------------------------------------------------------------------
    async def context(self, channel: discord.abc.Messageable | None, guild_id: int | None,
                      files: Sequence[discord.Attachment] = (), leading: Sequence[Attachment] = ()) -> Context:
        """The channel's rule and the files read as text (off the event loop: both may touch disk or network);
        ``leading`` (a chosen message) comes first and counts toward the files a question may carry."""
        rule = await asyncio.to_thread(self.rule_for, channel, guild_id)
        room = MAX_ATTACHMENTS - len(leading)
        read, notes = await asyncio.to_thread(read_files, [remote_file(f) for f in files[:room]], self.file_limits)
        notes += [f"`{f.filename}` was skipped: only {MAX_ATTACHMENTS} files are read per question."
                  for f in files[room:]]
        return Context(tuple(leading) + tuple(read), tuple(notes), rule)

    def rule_for(self, channel: discord.abc.Messageable | None, guild_id: int | None) -> ChannelRule:
        """A thread follows its channel's rule unless it has its own; a server's rule covers the rest."""
        return self.rules.current().for_discord(getattr(channel, "id", None), getattr(channel, "parent_id", None),
                                                guild_id)

    # -- asking ----------------------------------------------------------------------------------------
    async def post_placeholder(self, channel: discord.abc.Messageable, job_id: str) -> Placeholder:
        message = await channel.send(waiting_text(None), view=answer_controls(job_id),
                                     nonce=message_nonce(job_id, str(channel.id), "placeholder"))

        async def edit(**fields):
            await message.edit(**fields)

        return Placeholder(channel.id, str(message.id), edit)

    async def interaction_placeholder(self, interaction: discord.Interaction, channel_id: int | None) -> Placeholder:
        """The deferred response of ``interaction`` becomes the (private) placeholder."""
        async def edit(**fields):
            await interaction.edit_original_response(**fields)

        return Placeholder(channel_id, ORIGINAL, edit, interaction)

    async def submit(self, job_id: str, turns: Sequence[JobTurn], requester: Requester, place: Placeholder,
                     thread_id: int | None, asked: GenerationOverrides | None = None,
                     context: Context = Context()) -> None:
        """Enqueue the question and keep the placeholder telling the truth (position, busy, duplicate). What the
        person ``asked`` for wins over the channel's rule."""
        interaction = place.interaction
        job = Job(
            job_id=job_id, turns=tuple(turns), requester=requester, overrides=context.rule.overrides(asked),
            attachments=context.attachments, notes=context.notes, system_prompt=context.rule.system_prompt,
            reply_to=ReplyTarget(
                platform="discord", channel_id=str(place.channel_id), thread_id=str(thread_id) if thread_id else None,
                placeholder_id=place.message_id,
                interaction_token=interaction.token if interaction else None,
                application_id=str(interaction.application_id) if interaction else None,
            ),
        )
        try:
            position = await self.calls.until_reachable(self._enqueue, job, on_wait=self.tell_waiting(place))
        except Busy as err:
            metrics.BUSY.labels("discord", err.reason).inc()
            await place.edit(content=f"⏳ {err.message}", view=None)
            return
        except DuplicateJob:
            return
        metrics.ENQUEUED.labels("discord").inc()
        if position > 1:
            try:
                await self.calls.once(self._show_position, job, place, position, asyncio.get_running_loop())
            except UNREACHABLE as err:  # queued all the same: the worker's own notices take over
                log.info("no position notice for job %s: %s", job.job_id, err)

    def _enqueue(self, job: Job) -> int:
        self.index.remember_question(job)
        return self.queue.enqueue(job).position

    def _show_position(self, job: Job, place: Placeholder, position: int, loop: asyncio.AbstractEventLoop) -> None:
        """Under the placeholder lock: never after the worker has started answering."""
        show_unless_started(self.redis, self.queue.keys, job.job_id, lambda: asyncio.run_coroutine_threadsafe(
            place.edit(content=waiting_text(position)), loop).result(timeout=30))

    # -- buttons ---------------------------------------------------------------------------------------
    async def _job_for_click(self, interaction: discord.Interaction, job_id: str) -> Job | None | bool:
        """The job a button acts on (None: forgotten); False when Redis does not answer within the seconds
        Discord gives a click (the person is told to try again)."""
        try:
            return await self.calls.soon(self.index.job, job_id)
        except (TimeoutError, *UNREACHABLE):
            await interaction.response.send_message(QUEUE_UNREACHABLE, ephemeral=True)
            return False

    async def stop(self, interaction: discord.Interaction, job_id: str) -> None:
        job = await self._job_for_click(interaction, job_id)
        if job is False:
            return
        if job is None:
            await interaction.response.send_message("I no longer know this answer.", ephemeral=True)
            return
        if str(interaction.user.id) != job.requester.user_id:
            await interaction.response.send_message(ONLY_ASKER_CAN_STOP, ephemeral=True)
            return
        try:
            outcome = await self.calls.soon(self.queue.cancel, job_id)
        except (TimeoutError, *UNREACHABLE):
            await interaction.response.send_message(QUEUE_UNREACHABLE, ephemeral=True)
            return
        if outcome == "removed":
            await interaction.response.edit_message(content=STOPPED_BEFORE_START, view=None)
        elif outcome == "stopping":
            await interaction.response.send_message("Stopping the answer…", ephemeral=True)
        else:
            await interaction.response.send_message("This answer has already finished.", ephemeral=True)

    async def again(self, interaction: discord.Interaction, job_id: str,
                    channel: discord.abc.Messageable | None) -> None:
        """Ask ``job``'s question again where it was asked, with its files, under the channel's rule as it is now."""
        job = await self._job_for_click(interaction, job_id)
        if job is False:
            return
        if job is None:
            await interaction.response.send_message("I no longer know this question.", ephemeral=True)
            return
        if refusal := self.count_and_check(interaction.user, channel, interaction.guild_id):
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        requester = Requester(platform="discord", user_id=str(interaction.user.id),
                              display_name=interaction.user.display_name)
        new_id = self.job_id(f"again-{interaction.id}")
        if job.reply_to.placeholder_id == ORIGINAL:  # a private answer: answered again, privately
            await interaction.response.defer(ephemeral=True, thinking=True)
            place = await self.interaction_placeholder(interaction, int(job.reply_to.channel_id))
        else:
            await interaction.response.defer()
            place = await self.post_placeholder(channel, new_id)
        thread_id = int(job.reply_to.thread_id) if job.reply_to.thread_id else None
        context = Context(job.attachments, job.notes, await asyncio.to_thread(self.rule_for, channel,
                                                                             interaction.guild_id))
        await self.submit(new_id, job.turns, requester, place, thread_id, job.overrides, context)
