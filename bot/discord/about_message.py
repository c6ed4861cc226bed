""""Ask about this message": a message's context menu opens a modal asking what to know; the message's text
(and its files) then go with the question as context.

The modal is the interaction's only response (Discord allows one), so the allowlist is checked before it opens
and the real work starts when it is submitted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import discord

from bot.conversation import clean_text, is_blank
from bot.discord.history import plain_text
from worker.queue.job import MAX_TEXT_CHARS, Attachment

ASK_ABOUT_MESSAGE = "Ask about this message"
WHAT_TO_KNOW = "What do you want to know about it?"
EXPLAIN_IT = "Explain this message."  # the question when the field is left as it is, or emptied
QUESTION_CHARS = 4000  # Discord's most for a text input

OnSubmit = Callable[[discord.Interaction, discord.Message, str], Awaitable[None]]


class AboutMessageModal(discord.ui.Modal, title=ASK_ABOUT_MESSAGE):
    question = discord.ui.TextInput(label=WHAT_TO_KNOW, style=discord.TextStyle.paragraph, required=False,
                                    default=EXPLAIN_IT, max_length=QUESTION_CHARS)

    def __init__(self, on_submit: OnSubmit, message: discord.Message):
        super().__init__(timeout=15 * 60)  # as long as Discord keeps the interaction
        self._on_submit, self.message = on_submit, message

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = clean_text(self.question.value or "")
        await self._on_submit(interaction, self.message, EXPLAIN_IT if is_blank(text) else text)


def message_as_attachment(message: discord.Message, bot_user_id: int) -> Attachment | None:
    """The chosen message's text as a named piece of context (None when it has no words, e.g. only files)."""
    text = clean_text(plain_text(message, bot_user_id))
    if is_blank(text):
        return None
    author = getattr(message.author, "display_name", None) or "someone"
    return Attachment(name=f"message from {author}"[:300], text=text[:MAX_TEXT_CHARS])
