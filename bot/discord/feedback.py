"""👍/👎 under a finished Discord answer: the rating is recorded at the click, and a 👎 then asks what was wrong.

Anyone who can see an answer may rate it; each person has one rating per answer (``worker.feedback.store``), so
clicking again replaces it. The job comes from the reply index, as for Stop and Regenerate. Redis is called
through the adapter's ``RedisCalls`` with ``soon``: Discord wants a click answered within 3 seconds. Every click
and every submitted reason is answered privately (thanks, the modal, or what went wrong), never left unanswered,
which Discord would show as "This interaction failed".

The reason modal lives in this process (discord.py keeps it until it is submitted or ``REASON_WAIT_S`` passed):
a reason submitted after the adapter restarted is dropped by discord.py, but the 👎 itself was recorded at the
click.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import discord

from bot.discord.redis_calls import UNREACHABLE, RedisCalls
from worker.feedback.store import MAX_REASON_CHARS, FeedbackStore, Rating, RatingValue
from worker.queue.reply_index import ReplyIndex

log = logging.getLogger(__name__)

PLATFORM = "discord"
REASON_WAIT_S = 15 * 60  # as long as Discord keeps the interaction that opened the modal
THANKS = "Thanks for the feedback!"
THANKS_FOR_THE_REASON = "Thanks, that helps us make the answers better."
FORGOTTEN_ANSWER = "I no longer know this answer, so it can't be rated any more."
FORGOTTEN_RATING = "I no longer have your 👎 on this answer; please click 👎 again."
NOT_REACHABLE = "Your feedback could not be recorded right now; please try again in a minute."
FAILED = "Sorry, something went wrong recording your feedback; please try again in a minute."


class ReasonModal(discord.ui.Modal, title="What was wrong?"):
    """Opened by a 👎 (already recorded): an optional reason, added to that rating."""

    reason = discord.ui.TextInput(label="A short reason (optional)", style=discord.TextStyle.paragraph,
                                  required=False, max_length=MAX_REASON_CHARS,
                                  placeholder="e.g. wrong facts, missed the question, too long")

    def __init__(self, feedback: DiscordFeedback, job_id: str):
        super().__init__(timeout=REASON_WAIT_S)
        self.feedback, self.job_id = feedback, job_id

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.feedback.add_reason(interaction, self.job_id, self.reason.value or "")


class DiscordFeedback:
    """What the 👍 and 👎 buttons (``bot/discord/buttons.py``) and the reason modal do."""

    def __init__(self, store: FeedbackStore, index: ReplyIndex, calls: RedisCalls):
        self.store, self.index, self.calls = store, index, calls

    async def good(self, interaction: discord.Interaction, job_id: str) -> None:
        async def rate_and_thank() -> None:
            if await self._rate(interaction, job_id, "good"):
                await interaction.response.send_message(THANKS, ephemeral=True)

        await self._answered(interaction, rate_and_thank())

    async def bad(self, interaction: discord.Interaction, job_id: str) -> None:
        """Record the 👎 first (a modal closed unsubmitted still leaves it), then ask what was wrong."""
        async def rate_and_ask() -> None:
            if await self._rate(interaction, job_id, "bad"):
                await interaction.response.send_modal(ReasonModal(self, job_id))

        await self._answered(interaction, rate_and_ask())

    async def add_reason(self, interaction: discord.Interaction, job_id: str, reason: str) -> None:
        """The reason modal was submitted; an empty one keeps the reason given before (if any)."""
        async def add_and_thank() -> None:
            if reason.strip():
                added = await self.calls.soon(self.store.add_reason, job_id, PLATFORM, str(interaction.user.id),
                                              reason)
                if added is None:  # the rating expired, or Redis lost it, while the modal was open
                    await interaction.response.send_message(FORGOTTEN_RATING, ephemeral=True)
                    return
            await interaction.response.send_message(THANKS_FOR_THE_REASON, ephemeral=True)

        await self._answered(interaction, add_and_thank())

    async def _rate(self, interaction: discord.Interaction, job_id: str, rating: RatingValue) -> bool:
        """Record the person's rating; False when the answer is forgotten (and they were told)."""
        stored = await self.calls.soon(self._rate_job, job_id, str(interaction.user.id), rating)
        if stored is None:
            await interaction.response.send_message(FORGOTTEN_ANSWER, ephemeral=True)
            return False
        return True

    def _rate_job(self, job_id: str, user_id: str, rating: RatingValue) -> Rating | None:
        """In the pool, in one call so both fit the seconds a click has: the job, then its rating (None: the
        reply index no longer knows the job)."""
        job = self.index.job(job_id)
        return None if job is None else self.store.rate(job, PLATFORM, user_id, rating)

    async def _answered(self, interaction: discord.Interaction, work: Awaitable[None]) -> None:
        """Run ``work``; whatever fails, the person gets a private sentence saying so (and the log the details)."""
        try:
            await work
        except (TimeoutError, *UNREACHABLE) as err:  # TimeoutError: Redis did not answer within ``soon``'s wait
            log.warning("feedback not recorded: Redis did not answer (%s: %s)", type(err).__name__, err)
            await self._tell(interaction, NOT_REACHABLE)
        except Exception:
            log.exception("feedback on a Discord answer failed")
            await self._tell(interaction, FAILED)

    @staticmethod
    async def _tell(interaction: discord.Interaction, text: str) -> None:
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not tell the person their feedback failed", exc_info=True)
