"""Discord messages as the conversation the model sees: the bot's messages are its turns, mentions read as names.

Without the Message Content intent, people's messages that do not mention the bot arrive empty and are
left out; the bot's own messages and messages that mention it always carry their text.
"""

from __future__ import annotations

import re

import discord

from bot.conversation import build_turns
from worker.posters.status_text import is_status_text
from worker.queue.job import JobTurn

USER_MENTION = re.compile(r"<@!?(\d+)>")


def my_role(message: discord.Message) -> discord.Role | None:
    """The bot's own managed role in the message's server (None in DMs, or before the role is known)."""
    return message.guild.self_role if message.guild else None


def mentions_me(message: discord.Message, me: discord.abc.User) -> bool:
    """@bot, or @ the bot's managed role: Discord's autocomplete offers both, and people mean the bot either way."""
    role = my_role(message)
    return me in message.mentions or (role is not None and role in message.role_mentions)


def plain_text(message: discord.Message, bot_user_id: int) -> str:
    """The message as a person reads it, without the bot's own mention (or its role's)."""
    names = {str(user.id): user.display_name for user in message.mentions}
    content = message.content if isinstance(message.content, str) else ""  # a malformed payload's content
    text = re.sub(rf"<@!?{bot_user_id}>", "", content)
    if (role := my_role(message)) is not None:
        text = text.replace(role.mention, "")
    return USER_MENTION.sub(lambda m: "@" + names.get(m.group(1), "someone"), text).strip()


def as_pairs(messages: list[discord.Message], bot_user_id: int) -> list[tuple[str, str]]:
    """(role, text) for each message, oldest first; other bots and the bot's status messages left out."""
    pairs = []
    for message in messages:
        if message.author.id == bot_user_id:
            if not is_status_text(message.content) and message.type in (discord.MessageType.default,
                                                                        discord.MessageType.reply):
                pairs.append(("assistant", message.content))
        elif not message.author.bot:
            pairs.append(("user", plain_text(message, bot_user_id)))
    return pairs


async def recent_messages(channel: discord.abc.Messageable, before: discord.Message,
                          keep: int) -> list[discord.Message]:
    """The channel's newest ``keep`` messages before ``before``, oldest first."""
    messages = [m async for m in channel.history(limit=keep, before=before)]
    return list(reversed(messages))


def conversation(opening: list[JobTurn], earlier: list[discord.Message], question: discord.Message,
                 bot_user_id: int, question_text: str | None = None) -> list[JobTurn]:
    """The thread's opening question (from its job), the messages since, and the new question last (as
    ``question_text`` when the adapter rewrote it, e.g. a message that is only files)."""
    pairs = [(t.role, t.text) for t in opening]
    pairs += as_pairs(earlier, bot_user_id)
    pairs.append(("user", question_text if question_text is not None else plain_text(question, bot_user_id)))
    return build_turns(pairs)
