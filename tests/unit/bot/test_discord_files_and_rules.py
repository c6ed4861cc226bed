"""Files, channel rules, answer length, "Ask about this message", and payloads with optional fields left out:
the real discord.py bot on the fake Discord (REST + gateway + attachment CDN), real Redis + RQ, no worker."""

from __future__ import annotations

import logging

import pytest

from bot.channel_config import ChannelsFileError
from bot.discord.about_message import ASK_ABOUT_MESSAGE, EXPLAIN_IT
from bot.discord.ask_cog import ABOUT_THE_FILES
from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import bot_messages, discord_settings, running_bot, thread_of
from tests.unit.bot.test_discord_adapter import queued_jobs

CSV = b"city,population\nParis,2102650\nLyon,522250\n"


@pytest.fixture(scope="module")
def fake():
    with FakeDiscord() as server:
        yield server


@pytest.fixture
def loud(caplog):
    """Every record at WARNING or above from discord.py and the bot: a question that worked logs none."""
    caplog.set_level(logging.WARNING)
    yield lambda: [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(("discord", "bot"))]


def test_a_csv_on_a_mention_goes_with_the_question_and_no_error_is_logged(fake, redis, queue_name, loud):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis) as bot:
        message = fake.user_message_with_files(fake.channel_id, 4001, "which city is bigger?",
                                               {"cities.csv": (CSV, "text/csv; charset=utf-8")}, mentions_bot=True)
        fake.wait_for(lambda: queued_jobs(redis, settings))
        assert not bot.errors
    (job,) = queued_jobs(redis, settings)
    assert [(a.name, a.text) for a in job.attachments] == [("cities.csv", CSV.decode())]
    assert job.turns[-1].text == "which city is bigger?" and job.notes == ()
    assert job.reply_to.thread_id == thread_of(fake, message["id"])["id"]
    assert all("Authorization" not in h for h in fake.cdn_requests)  # signed CDN links need no token
    assert loud() == []  # no "Ignoring exception in command None" (CommandNotFound) for a mention


def test_only_a_file_is_a_question_about_it_and_a_file_that_cannot_be_read_is_named(fake, redis, queue_name, loud):
    settings = discord_settings(fake, queue_name, per_user_jobs=5)
    with running_bot(fake, settings, redis):
        fake.user_message_with_files(fake.channel_id, 4001, "", {"cities.csv": (CSV, "text/csv")}, mentions_bot=True)
        fake.wait_for(lambda: queued_jobs(redis, settings))
        fake.user_message_with_files(fake.channel_id, 4001, "what is in these?",
                                     {"photo.png": (b"\x89PNG", "image/png"), "gone.txt": (b"x", "text/plain")},
                                     mentions_bot=True, not_on_cdn=("gone.txt",))  # the CDN answers 404 for it
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 2)
    only_file, unreadable = queued_jobs(redis, settings)
    assert only_file.turns[-1].text == ABOUT_THE_FILES and only_file.attachments[0].name == "cities.csv"
    assert unreadable.attachments == () and len(unreadable.notes) == 2
    assert "`photo.png` was skipped: images are not read" in unreadable.notes[0]
    assert unreadable.notes[1] == "`gone.txt` was skipped: it could not be downloaded (HTTP 404)."
    assert [r for r in loud() if r.name.startswith("discord")] == []


def test_a_file_in_a_dm_goes_with_the_question(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    dm = fake.dm_channel(4002)
    with running_bot(fake, settings, redis):
        fake.user_message_with_files(dm, 4002, "", {"app.log": (b"ERROR disk full\n", None)})
        fake.wait_for(lambda: queued_jobs(redis, settings))
    (job,) = queued_jobs(redis, settings)
    assert job.turns[-1].text == ABOUT_THE_FILES and job.attachments[0].text == "ERROR disk full\n"
    assert job.reply_to.channel_id == str(dm)


def test_channel_rules_and_ask_length(fake, redis, queue_name, tmp_path):
    rules = tmp_path / "channels.yaml"
    rules.write_text(f"discord:\n  channels:\n    '{fake.channel_id}':\n      system_prompt: You answer in French.\n"
                     f"      max_new_tokens: 300\n      temperature: 0.2\n")
    settings = discord_settings(fake, queue_name, channels_file=str(rules), per_user_jobs=5)
    with running_bot(fake, settings, redis):
        fake.slash_command("ask", {"prompt": "hello"})
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        fake.slash_command("ask", {"prompt": "be brief", "length": "short", "temperature": 1.0})
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 2)
        first = queued_jobs(redis, settings)[0]
        fake.click(f"xwinbot:again:{first.job_id}", first.reply_to.placeholder_id, first.reply_to.thread_id)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 3)
    rule, short, again = queued_jobs(redis, settings)
    assert rule.system_prompt == "You answer in French." and rule.overrides.max_new_tokens == 300
    assert rule.overrides.temperature == 0.2
    assert short.overrides.max_new_tokens == 150 and short.overrides.temperature == 1.0  # asked wins
    assert short.system_prompt == "You answer in French."
    assert again.system_prompt == "You answer in French." and again.overrides == rule.overrides  # in the thread


def test_a_bad_channels_file_stops_the_start(fake, queue_name, redis, tmp_path):
    from bot.discord.client import create_bot

    bad = tmp_path / "channels.yaml"
    bad.write_text("discord:\n  channels:\n    '1':\n      temperature: 9\n")
    with pytest.raises(ChannelsFileError, match="temperature"):
        create_bot(discord_settings(fake, queue_name, channels_file=str(bad)), redis)


def test_ask_about_this_message_answers_in_a_thread_from_it(fake, redis, queue_name, loud):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis) as bot:
        chosen = fake.user_message_with_files(fake.channel_id, 4002, "deploy failed again, see log",
                                              {"deploy.log": (b"exit 137 OOMKilled\n", "text/plain")})
        menu = fake.message_command(ASK_ABOUT_MESSAGE, chosen["id"])
        modal = fake.wait_for(lambda: fake.modal_of(menu["id"]))
        (row,) = modal["components"]
        text_input = row.get("component") or row["components"][0]
        assert text_input["label"] == "What do you want to know about it?" and text_input["value"] == EXPLAIN_IT
        submit = fake.submit_modal(menu["id"], {text_input["custom_id"]: "why did it fail?"})
        fake.wait_for(lambda: queued_jobs(redis, settings))
        fake.wait_for(lambda: "Answering in" in (fake.message(
            fake._interactions[int(submit["id"])]["original"])["content"] or ""))
        assert not bot.errors
    (job,) = queued_jobs(redis, settings)
    assert job.turns[-1].text == "why did it fail?"
    assert [(a.name, a.text) for a in job.attachments] == [
        ("message from User4002", "deploy failed again, see log"), ("deploy.log", "exit 137 OOMKilled\n")]
    thread = thread_of(fake, chosen["id"])
    assert job.reply_to.thread_id == thread["id"] and bot_messages(fake, thread["id"])
    assert loud() == []


def test_an_interaction_without_the_channel_object_is_answered_from_channel_id(fake, redis, queue_name, loud):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis) as bot:
        chosen = fake.user_message(fake.channel_id, 4002, "a message to ask about")
        menu = fake.message_command(ASK_ABOUT_MESSAGE, chosen["id"], without=("channel",))
        fake.wait_for(lambda: fake.modal_of(menu["id"]))
        fake.submit_modal(menu["id"])
        fake.wait_for(lambda: queued_jobs(redis, settings))
        assert not bot.errors
    (job,) = queued_jobs(redis, settings)
    assert job.turns[-1].text == EXPLAIN_IT and job.reply_to.channel_id == thread_of(fake, chosen["id"])["id"]
    assert loud() == []


def test_a_mention_of_the_bots_role_is_a_mention(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    bot_role = next(r for r in fake._roles.values() if (r.get("tags") or {}).get("bot_id"))
    with running_bot(fake, settings, redis):
        message = fake.raw_message(fake.channel_id, 4001, f"<@&{bot_role['id']}> what is DNS?",
                                   mention_roles=[bot_role["id"]])
        fake.wait_for(lambda: queued_jobs(redis, settings))
    (job,) = queued_jobs(redis, settings)
    assert job.turns[-1].text == "what is DNS?" and thread_of(fake, message["id"])


def test_a_file_given_to_ask_goes_with_the_question(fake, redis, queue_name, loud):
    """``/ask file:`` as Discord sends it: the option holds the attachment id, data.resolved.attachments the object."""
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis) as bot:
        ask = fake.slash_command_with_files("ask", {"prompt": "which city is bigger?"},
                                            {"file": ("cities.csv", CSV, "text/csv; charset=utf-8")})
        fake.wait_for(lambda: queued_jobs(redis, settings))
        assert not bot.errors
    (option,) = [o for o in ask["data"]["options"] if o["name"] == "file"]
    assert option["type"] == 11 and option["value"] in ask["data"]["resolved"]["attachments"]
    (job,) = queued_jobs(redis, settings)
    assert [(a.name, a.text) for a in job.attachments] == [("cities.csv", CSV.decode())] and job.notes == ()
    assert job.turns[-1].text == "which city is bigger?" and job.reply_to.thread_id
    assert all("Authorization" not in h for h in fake.cdn_requests)
    assert loud() == []
