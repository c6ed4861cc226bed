"""Where the Discord adapter's failure notices land (the refusal, "ask me something", "couldn't take this
question"): for a mention in a channel in a thread started from the message, never a post in the channel; in a
thread or a DM a reply in place; for /ask and "Ask about this message" a private (ephemeral) message. The real
discord.py bot on the fake Discord, real Redis, no worker."""

from __future__ import annotations

import pytest

from bot.conversation import EMPTY_QUESTION
from bot.discord.about_message import ASK_ABOUT_MESSAGE
from bot.discord.questions import DiscordQuestions
from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import bot_messages, discord_settings, running_bot, thread_of
from tests.unit.bot.test_discord_adapter import queued_jobs

EPHEMERAL = 1 << 6
SORRY = "couldn't take this question"


@pytest.fixture(scope="module")
def fake():
    with FakeDiscord() as server:
        yield server


def texts(fake, channel_id) -> list[str]:
    return [m["content"] for m in bot_messages(fake, channel_id)]


def wait_for_thread_text(fake, message_id, phrase) -> dict:
    def found():
        thread = thread_of(fake, message_id)
        return thread if thread and any(phrase in t for t in texts(fake, thread["id"])) else None
    return fake.wait_for(found)


def broken(monkeypatch, method: str) -> None:
    async def fail(*args, **kwargs):
        raise RuntimeError("injected")
    monkeypatch.setattr(DiscordQuestions, method, fail)


def test_a_refused_mention_is_told_in_a_thread_from_it(fake, redis, queue_name):
    allowed = fake.add_channel("allowed-only")
    settings = discord_settings(fake, queue_name, discord_allowed_channels=str(allowed))
    with running_bot(fake, settings, redis) as bot:
        before = texts(fake, fake.channel_id)
        message = fake.user_message(fake.channel_id, 4001, "may I ask here?", mentions_bot=True)
        thread = wait_for_thread_text(fake, message["id"], "in this channel")
        assert thread["name"] == "may I ask here?"
        assert not bot.errors
    assert texts(fake, fake.channel_id) == before  # nothing in the channel itself
    assert queued_jobs(redis, settings) == []


def test_an_empty_mention_is_told_in_a_thread_from_it(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis):
        before = texts(fake, fake.channel_id)
        message = fake.user_message(fake.channel_id, 4001, "", mentions_bot=True)
        thread = wait_for_thread_text(fake, message["id"], EMPTY_QUESTION)
    assert texts(fake, thread["id"]) == [EMPTY_QUESTION]
    assert texts(fake, fake.channel_id) == before and queued_jobs(redis, settings) == []


def test_an_empty_mention_in_a_bot_thread_is_answered_in_place(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis):
        before = texts(fake, fake.channel_id)
        first = fake.user_message(fake.channel_id, 4001, "start a thread", mentions_bot=True)
        fake.wait_for(lambda: queued_jobs(redis, settings))
        thread = thread_of(fake, first["id"])
        empty = fake.user_message(thread["id"], 4001, "", mentions_bot=True)
        fake.wait_for(lambda: EMPTY_QUESTION in texts(fake, thread["id"]))
    (notice,) = [m for m in bot_messages(fake, thread["id"]) if m["content"] == EMPTY_QUESTION]
    assert notice["message_reference"]["message_id"] == empty["id"]
    assert texts(fake, fake.channel_id) == before


def test_a_refusal_in_a_dm_is_a_reply_in_the_dm(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name, discord_allowed_users="4001")
    dm = fake.dm_channel(4002)
    with running_bot(fake, settings, redis):
        asked = fake.user_message(dm, 4002, "hello?")
        fake.wait_for(lambda: texts(fake, dm))
    (notice,) = bot_messages(fake, dm)
    assert notice["message_reference"]["message_id"] == asked["id"] and queued_jobs(redis, settings) == []


@pytest.mark.parametrize("failing", ["context", "post_placeholder"])  # before / after the thread was started
def test_a_mention_that_cannot_be_taken_is_apologised_for_in_its_thread(fake, redis, queue_name, monkeypatch,
                                                                       failing):
    settings = discord_settings(fake, queue_name)
    broken(monkeypatch, failing)
    with running_bot(fake, settings, redis):
        before = texts(fake, fake.channel_id)
        message = fake.user_message(fake.channel_id, 4001, "will this fail?", mentions_bot=True)
        thread = wait_for_thread_text(fake, message["id"], SORRY)
    assert [t for t in texts(fake, thread["id"]) if SORRY in t] == [texts(fake, thread["id"])[-1]]
    assert texts(fake, fake.channel_id) == before and len([t for t in fake.threads()
                                                           if int(t["id"]) == int(message["id"])]) == 1


@pytest.mark.parametrize("private", [False, True])
def test_an_ask_that_cannot_be_taken_is_apologised_for_privately(fake, redis, queue_name, monkeypatch, private):
    settings = discord_settings(fake, queue_name)
    broken(monkeypatch, "context")
    with running_bot(fake, settings, redis):
        before = texts(fake, fake.channel_id)
        ask = fake.slash_command("ask", {"prompt": "will this fail?", "private": private})
        record = fake._interactions[int(ask["id"])]
        fake.wait_for(lambda: any(SORRY in (fake.message(m)["content"] or "")
                                  for m in [record["original"], *record["followups"]] if m))
    apology = next(fake.message(m) for m in [record["original"], *record["followups"]]
                   if m and SORRY in (fake.message(m)["content"] or ""))
    assert apology["flags"] & EPHEMERAL
    assert texts(fake, fake.channel_id) == before  # the public "thinking…" went away, nothing else was posted


def test_ask_about_a_message_that_cannot_be_taken_is_apologised_for_privately(fake, redis, queue_name, monkeypatch):
    settings = discord_settings(fake, queue_name)
    broken(monkeypatch, "context")
    with running_bot(fake, settings, redis):
        chosen = fake.user_message(fake.channel_id, 4002, "some message")
        before = texts(fake, fake.channel_id)
        menu = fake.message_command(ASK_ABOUT_MESSAGE, chosen["id"])
        fake.wait_for(lambda: fake.modal_of(menu["id"]))
        submit = fake.submit_modal(menu["id"])
        record = fake._interactions[int(submit["id"])]
        fake.wait_for(lambda: SORRY in (fake.message(record["original"])["content"] or "")
                      if record["original"] else False)
    assert fake.message(record["original"])["flags"] & EPHEMERAL
    assert texts(fake, fake.channel_id) == before and thread_of(fake, chosen["id"]) is None


def test_a_refused_ask_about_a_message_is_private(fake, redis, queue_name):
    allowed = fake.add_channel("allowed-only-2")
    settings = discord_settings(fake, queue_name, discord_allowed_channels=str(allowed))
    with running_bot(fake, settings, redis):
        chosen = fake.user_message(fake.channel_id, 4002, "another message")
        menu = fake.message_command(ASK_ABOUT_MESSAGE, chosen["id"])
        fake.wait_for(lambda: fake.interaction_responses(menu["id"]))
    (response,) = fake.interaction_responses(menu["id"])
    assert response["type"] == 4 and response["data"]["flags"] == EPHEMERAL
    assert "in this channel" in response["data"]["content"]
