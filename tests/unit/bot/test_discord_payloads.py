"""Gateway payloads as Discord's docs print them (tests/data/discord_payloads/, each naming its page), replayed
through the real discord.py bot on the fake Discord: handled as intended or ignored quietly, never a post outside
the question's place, no log record at WARNING or above for something that worked."""

from __future__ import annotations

import json
import logging
import time

import pytest

from bot.discord.about_message import ASK_ABOUT_MESSAGE, EXPLAIN_IT
from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import bot_messages, discord_settings, running_bot, thread_of
from tests.helpers.paths import TEST_DATA
from tests.unit.bot.test_discord_adapter import queued_jobs

PAYLOADS = TEST_DATA / "discord_payloads"


def payload(name: str, **ids) -> dict:
    """The documented payload with the fake's ids filled in ("$CHANNEL" → ids["CHANNEL"] …)."""
    text = (PAYLOADS / f"{name}.json").read_text()
    for key, value in sorted(ids.items(), key=lambda item: -len(item[0])):  # $FILE_ID before $ID
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


# -- the whole corpus: every payload replayed, one expectation each ----------------------------------------------
CSV = b"city,population\nParis,2102650\nLyon,522250\n"
ASKER = 4001


def command_id(fake, name: str, ctype: int) -> str:
    return next(c["id"] for c in fake.commands(fake.guild_id) + fake.commands() if c["name"] == name
                and c.get("type", 1) == ctype)


def common_ids(fake) -> dict:
    return {"CHANNEL": fake.channel_id, "GUILD": fake.guild_id, "BOT": fake.bot_user_id, "USER": ASKER,
            "APP": fake.application_id}


def replay_ask(fake, name: str, dm: bool) -> dict:
    where = fake.dm_channel(ASKER) if dm else fake.channel_id
    ids = {**common_ids(fake), "DM": where, "COMMAND": command_id(fake, "ask", 1),
           **fake.documented_interaction(2, ASKER, where, "ask")}
    fake.dispatch("INTERACTION_CREATE", payload(name, **ids))
    return {"where": where, "interaction": ids["ID"], "dm": dm}


def replay_message_command(fake, name: str) -> dict:
    chosen = fake.user_message(fake.channel_id, 4002, "deploy failed again: exit 137")
    ids = {**common_ids(fake), "TARGET": chosen["id"], "AUTHOR": 4002,
           "COMMAND": command_id(fake, ASK_ABOUT_MESSAGE, 3),
           **fake.documented_interaction(2, ASKER, fake.channel_id, ASK_ABOUT_MESSAGE)}
    fake.dispatch("INTERACTION_CREATE", payload(name, **ids))
    return {"interaction": ids["ID"], "message": chosen["id"]}


def replay_message(fake, name: str, **extra) -> dict:
    """The payload dispatched as-is; the fake keeps a message of that id in its channel (threads start from it)."""
    data = payload(name, **{**common_ids(fake), "MESSAGE": 0, **extra})
    message_id = fake.stored_message_id(data["channel_id"], int(data["author"]["id"]), data["content"])
    ids = {**common_ids(fake), "MESSAGE": message_id, **extra}
    fake.dispatch("MESSAGE_CREATE", payload(name, **ids))
    return {"message": ids["MESSAGE"], **extra}


def bot_thread(fake, redis, settings) -> str:
    """A thread the bot started (from an earlier mention), known to the bot like any thread."""
    first = fake.user_message(fake.channel_id, ASKER, "start a thread", mentions_bot=True)
    fake.wait_for(lambda: thread_of(fake, first["id"]) and queued_jobs(redis, settings))
    return thread_of(fake, first["id"])["id"]


CORPUS = ["interaction_ask", "interaction_ask_minimal", "interaction_ask_dm", "interaction_ask_dm_minimal",
          "interaction_message_command", "interaction_message_command_minimal", "message_create_mention",
          "message_create_attachment", "message_create_in_thread", "message_create_dm", "message_create_from_bot",
          "message_create_role_mention"]


def test_the_corpus_lists_every_payload_file_and_names_its_source():
    assert sorted(CORPUS) == sorted(p.stem for p in PAYLOADS.glob("*.json"))
    for path in PAYLOADS.glob("*.json"):
        assert "https://discord.com/developers/docs/" in json.loads(path.read_text())["_source"], path.name


@pytest.fixture(scope="module")
def fake():
    with FakeDiscord() as server:
        yield server


@pytest.mark.parametrize("name", CORPUS)
def test_each_documented_payload_is_handled_as_intended(fake, name, redis, queue_name, caplog):
    caplog.set_level(logging.WARNING)
    settings = discord_settings(fake, queue_name, per_user_jobs=5)
    channel_before = [m["id"] for m in bot_messages(fake, fake.channel_id)]
    with running_bot(fake, settings, redis) as bot:
        jobs_before = len(queued_jobs(redis, settings))
        if name.startswith("interaction_ask"):
            sent = replay_ask(fake, name, dm="_dm" in name)
        elif name.startswith("interaction_message_command"):
            sent = replay_message_command(fake, name)
            modal = fake.wait_for(lambda: fake.modal_of(sent["interaction"]))
            assert modal["title"] == ASK_ABOUT_MESSAGE
            fake.submit_modal(sent["interaction"], user_id=ASKER)
        elif name == "message_create_attachment":
            file = fake.hosted_file(fake.channel_id, "cities.csv", CSV, "text/csv; charset=utf-8")
            sent = replay_message(fake, name, FILE_ID=file["id"], FILE_URL=file["url"])
        elif name == "message_create_in_thread":
            thread = bot_thread(fake, redis, settings)
            jobs_before += 1
            sent = replay_message(fake, name, THREAD=thread)
        elif name == "message_create_dm":
            sent = replay_message(fake, name, DM=fake.dm_channel(4002), USER=4002)
        elif name == "message_create_role_mention":
            role = next(r for r in fake._roles.values() if (r.get("tags") or {}).get("bot_id"))
            sent = replay_message(fake, name, ROLE=role["id"])
        else:
            sent = replay_message(fake, name)
        if name == "message_create_from_bot":
            time.sleep(0.5)
        else:
            fake.wait_for(lambda: len(queued_jobs(redis, settings)) == jobs_before + 1)
            job = queued_jobs(redis, settings)[-1]
            fake.wait_for(lambda: bot_messages(fake, job.reply_to.channel_id))  # the placeholder
        assert not bot.errors
    jobs = queued_jobs(redis, settings)[jobs_before:]
    if name == "message_create_from_bot":
        assert jobs == []
    else:
        (job,) = jobs
        expect_place(fake, name, sent, job)
    # nothing in the channel but what a question there shows: /ask's own response ("… asked: …")
    new_in_channel = [m for m in bot_messages(fake, fake.channel_id) if m["id"] not in channel_before]
    originals = {str(fake._interactions[int(sent["interaction"])]["original"])} if "interaction" in sent else set()
    assert [m["id"] for m in new_in_channel if m["id"] not in originals] == []
    assert all("asked:" in m["content"] for m in new_in_channel)
    assert loud(caplog) == []


def expect_place(fake, name: str, sent: dict, job) -> None:
    """Where the job will answer: the thread of the question, or the DM."""
    if name.startswith("interaction_ask"):
        if sent["dm"]:
            assert job.reply_to.channel_id == str(sent["where"]) and job.reply_to.thread_id is None
        else:
            original = fake._interactions[int(sent["interaction"])]["original"]
            assert job.reply_to.thread_id == thread_of(fake, original)["id"] == job.reply_to.channel_id
        assert job.turns[-1].text == "what does HTTP 429 mean?"
    elif name.startswith("interaction_message_command"):
        assert job.reply_to.thread_id == thread_of(fake, sent["message"])["id"] and job.turns[-1].text == EXPLAIN_IT
        assert job.attachments[0].text == "deploy failed again: exit 137"
    elif name == "message_create_in_thread":
        assert job.reply_to.thread_id == job.reply_to.channel_id == str(sent["THREAD"])
        assert job.turns[-1].text.endswith("and what about 503?")
    elif name == "message_create_dm":
        assert job.reply_to.thread_id is None and job.turns[-1].text == "what does HTTP 429 mean?"
    else:
        assert job.reply_to.thread_id == thread_of(fake, sent["message"])["id"] == job.reply_to.channel_id
        if name == "message_create_attachment":
            assert [(a.name, a.text) for a in job.attachments] == [("cities.csv", CSV.decode())]
