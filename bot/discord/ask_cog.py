"""The ways to ask in Discord: ``/ask``, mentioning the bot, follow-ups in the bot's threads, and "Ask about this
message" (a message's context menu).

``/ask`` is deferred before anything else (Discord wants an answer within 3 s); only the allowlist, which
needs no I/O, is checked first so a refusal can be private. Then the question is shown, a thread is started
from it and the answer's placeholder is posted there. A mention in a channel starts a thread from the
message; a message in a bot thread (mentioning the bot, or any message when the Message Content intent is
on) continues that thread's conversation; a direct message continues the DM's conversation. Files on the
question (or ``/ask file:``) are read as text and go with it; the channels file's rule for the channel sets the
system prompt and sampling, and what the person asked for (``temperature``, ``length``) wins over it.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.conversation import EMPTY_QUESTION, build_turns, clean_text, is_blank
from bot.discord.about_message import ASK_ABOUT_MESSAGE, AboutMessageModal, message_as_attachment
from bot.discord.history import conversation, mentions_me, plain_text, recent_messages
from bot.discord.questions import Context, DiscordQuestions
from worker.queue.job import GenerationOverrides, JobTurn, Requester

log = logging.getLogger(__name__)

SHOWN_QUESTION_CHARS = 1800
THREAD_NAME_CHARS = 90
ABOUT_THE_FILES = "Please look at the attached file."  # the question of a message that is only files
ANSWER_LENGTHS = {"short": 150, "normal": None, "long": 1500}  # /ask length: → max_new_tokens (None: the default)
FALLBACK_NOTICE_SECONDS = 60  # a notice that could not go into a thread deletes itself after this long
THREAD_ALREADY_CREATED = 160004  # Discord's error code: the message already has a thread


def could_not_take(err: Exception) -> str:
    """What the person is told when their question failed before it reached the queue."""
    return f"⚠️ Sorry, I couldn't take this question ({type(err).__name__}). Please try again in a minute."


def thread_name(question: str) -> str:
    first_line = question.strip().splitlines()[0] if question.strip() else "question"
    return first_line[:THREAD_NAME_CHARS - 1] + "…" if len(first_line) > THREAD_NAME_CHARS else first_line


def requester_of(user: discord.abc.User) -> Requester:
    return Requester(platform="discord", user_id=str(user.id), display_name=user.display_name[:200])


def question_or_files(text: str, files: list[discord.Attachment]) -> str:
    """A message with files and no words asks about the files."""
    return ABOUT_THE_FILES if is_blank(text) and files else text


class AskCog(commands.Cog):
    def __init__(self, bot: commands.Bot, questions: DiscordQuestions):
        self.bot, self.questions = bot, questions
        self.about_message = app_commands.ContextMenu(name=ASK_ABOUT_MESSAGE, callback=self.ask_about_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.about_message)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.about_message.name, type=self.about_message.type)

    # -- /ask ------------------------------------------------------------------------------------------
    @app_commands.command(name="ask", description="Ask the model; the answer streams into a thread.")
    @app_commands.describe(prompt="Your question", private="Only you see the question and the answer",
                           temperature="Randomness, 0 (focused) to 2 (creative); default: the server's setting",
                           length="How long the answer may be; default: the channel's or the server's setting",
                           file="A text, code, CSV, JSON, log or PDF file the question is about")
    @app_commands.choices(length=[app_commands.Choice(name=name, value=name) for name in ANSWER_LENGTHS])
    async def ask(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 6000],
                  private: bool = False, temperature: app_commands.Range[float, 0.0, 2.0] | None = None,
                  length: app_commands.Choice[str] | None = None, file: discord.Attachment | None = None) -> None:
        channel = self.bot.channel_of(interaction)
        if refusal := self.questions.count_and_check(interaction.user, channel, interaction.guild_id):
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        prompt = clean_text(prompt if isinstance(prompt, str) else str(prompt))
        if is_blank(prompt):  # Discord requires a prompt, but a blank or invisible one is no question
            await interaction.response.send_message(EMPTY_QUESTION, ephemeral=True)
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        shown = False  # the public "thinking…" response became the question
        claim = f"interaction:{interaction.id}"
        try:
            asked = GenerationOverrides(temperature=temperature,
                                        max_new_tokens=ANSWER_LENGTHS[length.value] if length else None)
            context = await self.questions.context(channel, interaction.guild_id, [file] if file else [])
            turns = build_turns([("user", prompt)])
            job_id = self.questions.job_id(f"ask-{interaction.id}")
            if private:
                place = await self.questions.interaction_placeholder(interaction, getattr(channel, "id", None))
                if not await self.questions.claim(claim, place):
                    return
                await self.questions.submit(job_id, turns, requester_of(interaction.user), place, None, asked,
                                            context)
                return
            text = prompt if len(prompt) <= SHOWN_QUESTION_CHARS else prompt[:SHOWN_QUESTION_CHARS] + "…"
            question = await interaction.edit_original_response(content=f"{interaction.user.mention} asked: {text}")
            shown = True
            where = await self._thread_for(question, prompt, channel)
            place = await self.questions.post_placeholder(where, job_id)
            if not await self.questions.claim(claim, place):  # everything the person sees comes before Redis
                return
            thread_id = where.id if isinstance(where, discord.Thread) else None
            await self.questions.submit(job_id, turns, requester_of(interaction.user), place, thread_id, asked,
                                        context)
        except Exception as err:
            log.exception("/ask failed")
            await self._apologise(interaction, err, public_thinking=not private and not shown)

    @staticmethod
    async def _apologise(interaction: discord.Interaction, err: Exception, public_thinking: bool) -> None:
        """Privately. Discord turns the first followup after a deferral into the deferred "thinking…" message,
        keeping its visibility: a public one is deleted first so the apology is a private message of its own."""
        if public_thinking:
            try:
                await interaction.delete_original_response()
            except discord.HTTPException:
                log.warning("could not remove the /ask response before apologising", exc_info=True)
        await interaction.followup.send(could_not_take(err), ephemeral=True)

    async def _thread_for(self, message: discord.Message, question: str,
                          channel: discord.abc.Messageable | None) -> discord.abc.Messageable:
        """A new thread from ``message`` in a text channel; the same thread/DM where threads cannot start.
        ``channel`` is where the message is (a response's message knows its channel only when the interaction
        carried the channel object)."""
        if isinstance(channel, discord.TextChannel):
            return await channel.create_thread(name=thread_name(question), message=message)
        if channel is None:
            raise RuntimeError("the interaction names no channel to answer in")
        return channel

    # -- "Ask about this message" ----------------------------------------------------------------------
    async def ask_about_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The context menu: the allowlist first (a refusal is private), then the modal asks what to know."""
        channel = self.bot.channel_of(interaction)
        if refusal := self.questions.count_and_check(interaction.user, channel, interaction.guild_id):
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.send_modal(AboutMessageModal(self._answer_about, message))

    async def _answer_about(self, interaction: discord.Interaction, message: discord.Message, question: str) -> None:
        """The modal was submitted: answer in a thread from the message (or its thread/DM), privately say where."""
        await interaction.response.defer(thinking=True, ephemeral=True)
        try:
            channel = message.channel if message.channel is not None else self.bot.channel_of(interaction)
            about = message_as_attachment(message, self.bot.user.id)
            context = await self.questions.context(channel, interaction.guild_id, message.attachments,
                                                   leading=[about] if about else [])
            where = await self._thread_from(message, question, channel)
            job_id = self.questions.job_id(f"ctx-{interaction.id}")
            place = await self.questions.post_placeholder(where, job_id)
            if not await self.questions.claim(f"interaction:{interaction.id}", place):
                return
            thread_id = where.id if isinstance(where, discord.Thread) else None
            await self.questions.submit(job_id, build_turns([("user", question)]), requester_of(interaction.user),
                                        place, thread_id, None, context)
            await interaction.edit_original_response(content=f"Answering in {where.jump_url}"
                                                     if hasattr(where, "jump_url") else "Answering below.")
        except Exception as err:
            log.exception("Ask about this message failed")
            await interaction.followup.send(could_not_take(err), ephemeral=True)

    async def _thread_from(self, message: discord.Message, question: str,
                           channel: discord.abc.Messageable | None) -> discord.abc.Messageable:
        """The message's thread when it has one, a new one in a text channel, else where the message is."""
        if message.thread is not None:
            return message.thread
        return await self._thread_for(message, question, channel)

    # -- mentions, follow-ups, DMs ---------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        author = getattr(message, "author", None)  # a malformed gateway payload may lack it
        if author is None or author.bot or message.webhook_id or self.bot.user is None:
            return
        channel = message.channel
        mentioned = mentions_me(message, self.bot.user)
        if isinstance(channel, discord.DMChannel):
            await self._guarded(message, self._follow_up(message))
        elif isinstance(channel, discord.Thread):
            if mentioned or (self.questions.options.message_content and await self._is_bot_thread(channel.id)):
                await self._guarded(message, self._follow_up(message))
        elif mentioned:
            await self._guarded(message, self._new_thread(message))

    async def _is_bot_thread(self, thread_id: int) -> bool:
        return await self.questions.calls.until_reachable(self.questions.index.is_bot_thread, "discord",
                                                          str(thread_id), str(thread_id))

    async def _new_thread(self, message: discord.Message) -> None:
        text = await self._question_in(message)
        if text is None:
            return
        context = await self._message_context(message)
        thread = await self._thread_of_message(message, text)
        job_id = self.questions.job_id(f"msg-{message.id}")
        place = await self.questions.post_placeholder(thread, job_id)
        if not await self.questions.claim(f"message:{message.id}", place):
            return
        await self.questions.submit(job_id, build_turns([("user", text)]), requester_of(message.author), place,
                                    thread.id, None, context)

    async def _follow_up(self, message: discord.Message) -> None:
        text = await self._question_in(message)
        if text is None:
            return
        channel = message.channel
        job_id = self.questions.job_id(f"msg-{message.id}")
        place = await self.questions.post_placeholder(channel, job_id)
        if not await self.questions.claim(f"message:{message.id}", place):
            return
        opening: list[JobTurn] = []
        if isinstance(channel, discord.Thread):
            opening = await self.questions.calls.until_reachable(self._opening_question, channel.id)
        earlier = await recent_messages(channel, message, self.questions.options.history_messages)
        turns = conversation(opening, earlier, message, self.bot.user.id, text)
        context = await self._message_context(message)
        thread_id = channel.id if isinstance(channel, discord.Thread) else None
        await self.questions.submit(job_id, turns, requester_of(message.author), place, thread_id, None, context)

    async def _message_context(self, message: discord.Message) -> Context:
        return await self.questions.context(message.channel, message.guild.id if message.guild else None,
                                            message.attachments)

    def _opening_question(self, thread_id: int) -> list[JobTurn]:
        """The question that started a bot thread (it lives in the parent channel, or was a slash command)."""
        index = self.questions.index
        origin = index.thread_origin("discord", str(thread_id), str(thread_id))
        job = index.job(origin) if origin else None
        return list(job.turns[:1]) if job else []

    async def _question_in(self, message: discord.Message) -> str | None:
        """The question ``message`` asks, or None when it was refused or asks nothing (the person is told). The
        claim of a question comes once its placeholder shows (a blank one's here, before the notice)."""
        guild_id = message.guild.id if message.guild else None
        if refusal := self.questions.count_and_check(message.author, message.channel, guild_id):
            # a message cannot be answered privately: in a thread from it (in a channel), else a reply in the
            # thread/DM that goes away after a minute; either way it pings no one
            await self._notice(message, refusal, delete_after=FALLBACK_NOTICE_SECONDS)
            return None
        text = question_or_files(clean_text(plain_text(message, self.bot.user.id)), message.attachments)
        if is_blank(text):
            if await self.questions.claim(f"message:{message.id}"):
                await self._notice(message, EMPTY_QUESTION)
            return None
        return text

    async def _guarded(self, message: discord.Message, work) -> None:
        try:
            await work
        except Exception as err:
            log.exception("could not take a Discord message")
            try:
                await self._notice(message, could_not_take(err))
            except discord.HTTPException:
                log.warning("could not tell the user about the failure", exc_info=True)

    # -- notices about a message -----------------------------------------------------------------------
    async def _notice(self, message: discord.Message, text: str, delete_after: float | None = None) -> None:
        """Tell the person about ``message`` (refused, no question, could not take it) where it belongs.

        In a text channel: in the thread started from the message (the one its question already has, else a new
        one), so nothing lands in the channel itself; the notice stays there (deleting it would leave an empty
        thread). Only where no thread can be started (missing permission, Discord refusing) it falls back to a
        reply in the channel that deletes itself after a minute. In a thread or a DM: a reply in place
        (``delete_after``, when given, removes it later)."""
        if not isinstance(message.channel, discord.TextChannel):
            await message.reply(text, delete_after=delete_after)
            return
        try:
            thread = await self._thread_of_message(message, plain_text(message, self.bot.user.id))
        except discord.HTTPException as err:
            log.info("no thread for a notice on message %s (%s): a reply that deletes itself", message.id, err)
            await message.reply(text, delete_after=FALLBACK_NOTICE_SECONDS)
            return
        await thread.send(text)

    async def _thread_of_message(self, message: discord.Message, question: str) -> discord.Thread:
        """The thread started from ``message``: the one it has (a notice after a failure), else a new one."""
        existing = message.thread or message.guild and message.guild.get_thread(message.id)
        if existing is not None:
            return existing
        try:
            return await message.create_thread(name=thread_name(clean_text(question)))
        except discord.HTTPException as err:
            if err.code != THREAD_ALREADY_CREATED:
                raise
            thread = await self.bot.fetch_channel(message.id)  # a thread's id is its starter message's
            if not isinstance(thread, discord.Thread):
                raise
            return thread
