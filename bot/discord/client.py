"""The Discord side of xwinbot: a discord.py bot with the ask cog and persistent answer buttons.

    xwinbot discord          # XWINBOT_DISCORD_TOKEN; `xwinbot up` starts it too when the token is set
    xwinbot discord-invite   # prints the URL that adds the bot to a server with exactly what it needs

Slash commands are synced at start: to ``XWINBOT_DISCORD_DEV_GUILD_ID`` only (instant, for development) or
globally (Discord may take up to an hour to show a new global command).
"""

from __future__ import annotations

import base64
import logging

import discord
from discord.ext import commands
from redis import Redis

from bot.access import Allowlist
from bot.attachments import FileLimits
from bot.channel_config import ChannelRules
from bot.discord.ask_cog import AskCog
from bot.discord.buttons import ANSWER_BUTTONS
from bot.discord.feedback import DiscordFeedback
from bot.discord.gateway_events import InteractionChannels, drop_unreadable_events
from bot.discord.questions import DiscordOptions, DiscordQuestions
from worker.feedback.store import FeedbackStore
from worker.ops.health_server import start_health_server
from worker.ops.preflight import discord_problems, raise_if_any
from worker.queue.job_queue import job_queue
from worker.queue.redis_connection import redis_from_settings
from worker.settings import Settings

log = logging.getLogger(__name__)

PERMISSIONS = discord.Permissions(view_channel=True, send_messages=True, send_messages_in_threads=True,
                                  create_public_threads=True, read_message_history=True)
SCOPES = ("bot", "applications.commands")


def intents(settings: Settings) -> discord.Intents:
    """Guilds and messages; Message Content only when asked for (it is privileged)."""
    chosen = discord.Intents.default()
    chosen.message_content = settings.discord_message_content
    return chosen


class XwinBot(commands.Bot):
    def __init__(self, settings: Settings, redis: Redis, **kwargs):
        # The bot never joins voice: discord.py's start-up warnings about missing voice libraries are noise.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(command_prefix=commands.when_mentioned, intents=intents(settings),
                         allowed_mentions=discord.AllowedMentions.none(), help_command=None, **kwargs)
        self.interaction_channels = InteractionChannels()
        self.interaction_channels.watch(self._connection.parsers)
        drop_unreadable_events(self._connection.parsers)
        self.settings = settings
        self.questions = DiscordQuestions(
            job_queue(settings, redis), redis,
            Allowlist.of(servers=settings.discord_allowed_guilds, channels=settings.discord_allowed_channels,
                         users=settings.discord_allowed_users, roles=settings.discord_allowed_roles),
            DiscordOptions(message_content=settings.discord_message_content,
                           history_messages=settings.discord_history_messages),
            ChannelRules(settings.channels_file),  # a bad file stops the start here, with every problem named
            FileLimits.from_settings(settings),
        )
        self.feedback = DiscordFeedback(  # 👍/👎: the same reply index and Redis pool as Stop and Regenerate
            FeedbackStore(redis, self.questions.queue.keys, retention_days=settings.feedback_retention_days),
            self.questions.index, self.questions.calls)

    async def on_message(self, message: discord.Message, /) -> None:
        """No prefix commands: the ask cog's listener reads messages. commands.Bot's default would hand the
        word after every mention to process_commands, which logs CommandNotFound as an ERROR."""

    def channel_of(self, interaction: discord.Interaction) -> discord.abc.Messageable | None:
        return self.interaction_channels.channel_of(self, interaction)

    async def setup_hook(self) -> None:
        await self.add_cog(AskCog(self, self.questions))
        self.add_dynamic_items(*ANSWER_BUTTONS)
        if self.settings.discord_dev_guild_id:
            guild = discord.Object(self.settings.discord_dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_ready(self) -> None:
        log.info("Discord: logged in as %s (%s)", self.user, self.user.id if self.user else "?")


def create_bot(settings: Settings, redis: Redis | None = None, **kwargs) -> XwinBot:
    raise_if_any(discord_problems(settings))
    discord.http.Route.BASE = settings.discord_api_url.rstrip("/")
    return XwinBot(settings, redis or redis_from_settings(settings), **kwargs)


def application_id_from_token(token: str) -> int:
    """A bot token starts with the bot's user id (= its application id) in base64."""
    head = token.split(".")[0]
    return int(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=SCOPES)


def run(settings: Settings) -> None:
    """Run the Discord adapter until interrupted (with its /metrics and /healthz)."""
    bot = create_bot(settings)
    health = start_health_server(settings, "discord")
    try:
        bot.run(settings.discord_token.get_secret_value(), log_handler=None)
    finally:
        if health:
            health.stop()
