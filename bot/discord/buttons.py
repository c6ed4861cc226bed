"""The buttons under an answer (Stop, Regenerate; 👍 and 👎 once it is finished), as persistent dynamic items.

Their custom ids carry the job id (``worker.posters.discord_controls``), so a click works after either process
restarted: discord.py matches the id against the template and rebuilds the button.
"""

from __future__ import annotations

import discord

from worker.posters.discord_controls import AGAIN_ID, BAD_ID, BUTTON_JOB_ID_CHARS, CUSTOM_ID_PATTERN, GOOD_ID, STOP_ID


def _template(custom_id_format: str) -> str:
    return custom_id_format.format(job_id=f"(?P<job_id>{CUSTOM_ID_PATTERN})")


class _JobButton:
    """A button that acts on one job: built from its id, and rebuilt by discord.py from the custom id."""

    custom_id_format: str
    label: str | None
    style: discord.ButtonStyle
    emoji: str

    def __init__(self, job_id: str):
        super().__init__(discord.ui.Button(style=self.style, label=self.label, emoji=self.emoji,
                                           custom_id=self.custom_id_format.format(job_id=job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match):
        return cls(match["job_id"])


class StopButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=_template(STOP_ID)):
    custom_id_format, label, style, emoji = STOP_ID, "Stop", discord.ButtonStyle.danger, "⏹️"

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.questions.stop(interaction, self.job_id)


class AgainButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=_template(AGAIN_ID)):
    custom_id_format, label, style, emoji = AGAIN_ID, "Regenerate", discord.ButtonStyle.secondary, "🔁"

    async def callback(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        await client.questions.again(interaction, self.job_id, client.channel_of(interaction))


class GoodButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=_template(GOOD_ID)):
    custom_id_format, label, style, emoji = GOOD_ID, None, discord.ButtonStyle.secondary, "👍"

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.feedback.good(interaction, self.job_id)


class BadButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=_template(BAD_ID)):
    custom_id_format, label, style, emoji = BAD_ID, None, discord.ButtonStyle.secondary, "👎"

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.feedback.bad(interaction, self.job_id)


ANSWER_BUTTONS = (StopButton, AgainButton, GoodButton, BadButton)  # every button the client recognises


def answer_controls(job_id: str) -> discord.ui.View:
    """The buttons of a placeholder: Stop and Regenerate (the worker drops Stop when the answer is done)."""
    view = discord.ui.View(timeout=None)
    if len(job_id) <= BUTTON_JOB_ID_CHARS:
        view.add_item(StopButton(job_id))
        view.add_item(AgainButton(job_id))
    return view
