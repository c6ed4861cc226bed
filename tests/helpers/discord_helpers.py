"""Shared pieces of the Discord tests: settings for a fake Discord, our bot running against it."""

from __future__ import annotations

from contextlib import contextmanager

from redis import Redis

from bot.discord.client import create_bot
from tests.fakes.fake_discord import ClientThread
from worker.settings import Settings


def discord_settings(fake, queue_name: str, **extra) -> Settings:
    return Settings(discord_token=fake.bot_token, discord_api_url=fake.api_base, discord_dev_guild_id=fake.guild_id,
                    queue_name=queue_name, **extra)


@contextmanager
def running_bot(fake, settings: Settings, redis: Redis):
    """Our real discord.py bot, logged in and connected to the fake's gateway (commands synced to its guild)."""
    with fake.patch_discord_py():
        bot = ClientThread(lambda: create_bot(settings, redis, guild_ready_timeout=0.1),
                           settings.discord_token.get_secret_value()).start()
        try:
            yield bot
        finally:
            bot.stop()


def bot_messages(fake, channel_id) -> list[dict]:
    """The bot's messages everyone sees in a channel or thread (ephemeral ones left out)."""
    return [m for m in fake.messages(channel_id)
            if int(m["author"]["id"]) == fake.bot_user_id and not (m.get("flags") or 0) & 64]


def thread_of(fake, message_id) -> dict | None:
    """The thread started from a message (its id equals the message's)."""
    return next((t for t in fake.threads() if int(t["id"]) == int(message_id)), None)


def sends_with_content(fake) -> list:
    """Every REST request the bot (or worker) made that carries message content."""
    return [r for r in fake.requests if r.method in ("POST", "PATCH") and isinstance(r.json, dict)
            and ("content" in r.json or "content" in (r.json.get("data") or {}))]


def button_names(message: dict) -> list[str]:
    """What a person sees on each of a message's buttons: its label, or its emoji when it shows only that."""
    return [c.get("label") or c["emoji"]["name"] for row in message.get("components") or [] for c in row["components"]]
