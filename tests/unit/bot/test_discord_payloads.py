"""Gateway payloads as Discord's docs print them (tests/data/discord_payloads/, each naming its page), replayed
through the real discord.py bot on the fake Discord: handled as intended or ignored quietly, never a post outside
the question's place, no log record at WARNING or above for something that worked."""

from __future__ import annotations

import json
import logging
import time

from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import bot_messages, discord_settings, running_bot
from tests.helpers.paths import TEST_DATA
from tests.unit.bot.test_discord_adapter import queued_jobs

PAYLOADS = TEST_DATA / "discord_payloads"


def payload(name: str, **ids) -> dict:
    """The documented payload with the fake's ids filled in ("$CHANNEL" → ids["CHANNEL"] …)."""
    text = (PAYLOADS / f"{name}.json").read_text()
    for key, value in ids.items():
        text = text.replace(f"${key}", str(value))
    data = json.loads(text)
    data.pop("_source")
    return data


def loud(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(("discord", "bot"))]


def test_a_dm_as_documented_is_answered_in_the_dm(redis, queue_name, caplog):
    caplog.set_level(logging.WARNING)
    with FakeDiscord() as fake:
        settings = discord_settings(fake, queue_name)
        dm = fake.dm_channel(4002)
        with running_bot(fake, settings, redis) as bot:
            fake.dispatch("MESSAGE_CREATE", payload("message_create_dm", MESSAGE=fake._next_id(), DM=dm, USER=4002))
            fake.wait_for(lambda: queued_jobs(redis, settings))
            fake.wait_for(lambda: bot_messages(fake, dm))
            assert not bot.errors
        (job,) = queued_jobs(redis, settings)
        assert job.reply_to.channel_id == str(dm) and job.turns[-1].text == "what does HTTP 429 mean?"
        assert [m["channel_id"] for m in bot_messages(fake, fake.channel_id)] == []
    assert loud(caplog) == []


def test_a_bot_mentioning_ours_is_ignored_quietly(redis, queue_name, caplog):
    caplog.set_level(logging.WARNING)
    with FakeDiscord() as fake:
        settings = discord_settings(fake, queue_name)
        with running_bot(fake, settings, redis) as bot:
            fake.dispatch("MESSAGE_CREATE", payload("message_create_from_bot", MESSAGE=fake._next_id(),
                                                    CHANNEL=fake.channel_id, GUILD=fake.guild_id,
                                                    BOT=fake.bot_user_id))
            time.sleep(0.5)
            assert not bot.errors
        assert queued_jobs(redis, settings) == [] and bot_messages(fake, fake.channel_id) == []
    assert loud(caplog) == []
