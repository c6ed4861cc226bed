"""The Discord adapter alone: the real discord.py bot on a fake Discord (REST + gateway), real Redis + RQ.

No worker runs here, so questions stay queued: these tests look at what the adapter does before an answer.
"""

from __future__ import annotations

import time

import pytest

from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import bot_messages, discord_settings, running_bot, sends_with_content, thread_of
from tests.helpers.queued import queued_jobs

EPHEMERAL = 64


@pytest.fixture(scope="module")
def fake():
    with FakeDiscord() as server:
        yield server


def labels(message: dict) -> list[str]:
    return [c["label"] for row in message.get("components") or [] for c in row["components"]]


def test_ask_is_deferred_at_once_then_shown_with_a_thread_and_a_placeholder(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis) as bot:
        sent = time.time()
        interaction = fake.slash_command("ask", {"prompt": "What is the capital of France?", "temperature": 0.5})
        fake.wait_for(lambda: fake.interaction_responses(interaction["id"]))
        defer = fake.interaction_responses(interaction["id"])[0]
        print(f"interaction → defer: {(defer['at'] - sent) * 1000:.0f} ms")
        assert defer["type"] == 5 and defer["at"] - sent < 1.0  # Discord wants 3 s
        fake.wait_for(lambda: queued_jobs(redis, settings))
        assert not bot.errors
    (job,) = queued_jobs(redis, settings)
    question = next(m for m in bot_messages(fake, fake.channel_id) if "What is the capital" in m["content"])
    assert question["content"] == "<@4001> asked: What is the capital of France?"
    thread = thread_of(fake, question["id"])
    assert thread and thread["name"] == "What is the capital of France?"
    (placeholder,) = bot_messages(fake, thread["id"])
    assert placeholder["content"] == "thinking…" and labels(placeholder) == ["Stop", "Regenerate"]
    assert job.reply_to.thread_id == thread["id"] and job.reply_to.placeholder_id == placeholder["id"]
    assert [(t.role, t.text) for t in job.turns] == [("user", "What is the capital of France?")]
    assert job.overrides.temperature == 0.5 and job.requester.user_id == "4001"


def test_mention_starts_a_thread_from_the_message(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis):
        message = fake.user_message(fake.channel_id, 4002, "how do I undo a git commit?", mentions_bot=True)
        fake.wait_for(lambda: queued_jobs(redis, settings))
    (job,) = queued_jobs(redis, settings)
    thread = thread_of(fake, message["id"])
    assert thread and thread["name"] == "how do I undo a git commit?"
    assert job.turns[-1].text == "how do I undo a git commit?" and job.reply_to.thread_id == thread["id"]


def test_queue_position_shows_in_the_placeholder(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis):
        fake.slash_command("ask", {"prompt": "first"}, user_id=4001)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        fake.slash_command("ask", {"prompt": "second"}, user_id=4002)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 2)
        second = queued_jobs(redis, settings)[1]
        fake.wait_for(lambda: fake.message(second.reply_to.placeholder_id)["content"] == "thinking… #2 in queue")


def test_stop_and_regenerate_buttons(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis) as bot:
        fake.slash_command("ask", {"prompt": "tell me a joke"}, user_id=4001)
        fake.wait_for(lambda: queued_jobs(redis, settings))
        (job,) = queued_jobs(redis, settings)
        thread, placeholder = job.reply_to.thread_id, job.reply_to.placeholder_id
        # someone else may not stop it
        other = fake.click(f"xwinbot:stop:{job.job_id}", placeholder, thread, user_id=4002)
        fake.wait_for(lambda: fake.interaction_responses(other["id"]))
        refusal = fake.interaction_responses(other["id"])[0]
        assert refusal["data"]["flags"] == EPHEMERAL and "Only the person who asked" in refusal["data"]["content"]
        # Regenerate asks the same question again, in the same thread
        fake.click(f"xwinbot:again:{job.job_id}", placeholder, thread, user_id=4002)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 2)
        again = queued_jobs(redis, settings)[1]
        assert again.turns == job.turns and again.reply_to.thread_id == thread
        assert again.requester.user_id == "4002"
        assert len(bot_messages(fake, thread)) == 2
        # the asker stops the first one before it started
        fake.click(f"xwinbot:stop:{job.job_id}", placeholder, thread, user_id=4001)
        fake.wait_for(lambda: fake.message(placeholder)["content"] == "(stopped before it started)")
        assert labels(fake.message(placeholder)) == []
        assert [j.job_id for j in queued_jobs(redis, settings)] == [again.job_id]
        assert not bot.errors


def test_buttons_keep_working_after_a_restart(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name)
    with running_bot(fake, settings, redis):
        fake.slash_command("ask", {"prompt": "persistent?"})
        fake.wait_for(lambda: queued_jobs(redis, settings))
    (job,) = queued_jobs(redis, settings)
    with running_bot(fake, settings, redis):  # a new process: no view was ever added for this message
        fake.click(f"xwinbot:stop:{job.job_id}", job.reply_to.placeholder_id, job.reply_to.thread_id)
        fake.wait_for(lambda: fake.message(job.reply_to.placeholder_id)["content"] == "(stopped before it started)")


def test_allowlists_refuse_privately(fake, redis, queue_name):
    role = fake.add_role("askers")
    fake.add_member(4003, roles=[role])
    other_channel = fake.add_channel("random")
    settings = discord_settings(fake, queue_name, discord_allowed_channels=str(fake.channel_id),
                                discord_allowed_roles=str(role))
    with running_bot(fake, settings, redis):
        wrong_channel = fake.slash_command("ask", {"prompt": "hi"}, user_id=4003, channel_id=other_channel)
        wrong_person = fake.slash_command("ask", {"prompt": "hi"}, user_id=4001)
        fake.wait_for(lambda: fake.interaction_responses(wrong_channel["id"])
                      and fake.interaction_responses(wrong_person["id"]))
        allowed = fake.slash_command("ask", {"prompt": "may I?"}, user_id=4003)
        fake.wait_for(lambda: queued_jobs(redis, settings))
    for interaction, why in ((wrong_channel, "in this channel"), (wrong_person, "your questions")):
        body = fake.interaction_responses(interaction["id"])[0]
        assert body["type"] == 4 and body["data"]["flags"] == EPHEMERAL and why in body["data"]["content"]
    assert [j.requester.user_id for j in queued_jobs(redis, settings)] == ["4003"]
    assert fake.interaction_responses(allowed["id"])[0]["type"] == 5


def test_follow_ups_without_a_mention_need_the_message_content_intent(fake, redis, queue_name):
    for content_intent, expected_jobs in ((False, 1), (True, 2)):
        settings = discord_settings(fake, queue_name, discord_message_content=content_intent, per_user_jobs=5)
        with running_bot(fake, settings, redis):
            before = len(queued_jobs(redis, settings))
            message = fake.user_message(fake.channel_id, 4001, "start a thread", mentions_bot=True)
            fake.wait_for(lambda settings=settings, before=before: len(queued_jobs(redis, settings)) == before + 1)
            thread = thread_of(fake, message["id"])
            fake.user_message(thread["id"], 4001, "and a follow-up without mentioning the bot")
            time.sleep(1.0)
            assert len(queued_jobs(redis, settings)) == before + expected_jobs
    follow_up = queued_jobs(redis, settings)[-1]
    assert [(t.role, t.text) for t in follow_up.turns] == [
        ("user", "start a thread\n\nand a follow-up without mentioning the bot")]


def test_every_message_the_bot_sends_pings_no_one(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name, per_user_jobs=5)
    with running_bot(fake, settings, redis):
        fake.slash_command("ask", {"prompt": "@everyone look <@&1> <@4002>"})
        fake.user_message(fake.channel_id, 4001, "@here what now?", mentions_bot=True)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 2)
    sends = sends_with_content(fake)
    assert len(sends) >= 4
    for request in sends:
        body = request.json.get("data", request.json)
        assert body.get("allowed_mentions") == {"parse": []}, (request.method, request.path, body)


def test_up_starts_the_discord_adapter_when_its_token_is_set(fake, redis, queue_name):
    from bot.launch import start_adapters

    settings = discord_settings(fake, queue_name)
    with fake.patch_discord_py():
        ready_before = fake.ready_count
        adapters = start_adapters(settings)
        try:
            assert adapters.names == ["Discord"]
            fake.wait_for(lambda: fake.ready_count > ready_before)
            time.sleep(2.5)  # discord.py waits for more guilds before it is ready (2 s by default)
            fake.slash_command("ask", {"prompt": "are you there?"})
            fake.wait_for(lambda: queued_jobs(redis, settings))
        finally:
            adapters.stop()


def test_invite_url_asks_for_exactly_what_the_bot_needs(capsys, monkeypatch):
    import base64
    from urllib.parse import parse_qs, urlparse

    import discord

    from worker.cli import main

    token = base64.urlsafe_b64encode(b"112233445566778899").decode().rstrip("=") + ".Gx.secret"
    monkeypatch.setenv("XWINBOT_DISCORD_TOKEN", token)
    assert main(["discord-invite"]) == 0
    query = parse_qs(urlparse(capsys.readouterr().out.strip()).query)
    assert query["client_id"] == ["112233445566778899"]
    assert set(query["scope"][0].split()) == {"bot", "applications.commands"}
    granted = {name for name, on in discord.Permissions(int(query["permissions"][0])) if on}
    assert granted == {"read_messages", "send_messages", "send_messages_in_threads", "create_public_threads",
                       "read_message_history"}  # read_messages is discord.py's name for View Channels


def test_busy_is_said_in_the_placeholder(fake, redis, queue_name):
    settings = discord_settings(fake, queue_name, per_user_jobs=1)
    with running_bot(fake, settings, redis):
        fake.slash_command("ask", {"prompt": "first"}, user_id=4002)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        second = fake.slash_command("ask", {"prompt": "second question"}, user_id=4002)
        question = fake.wait_for(lambda: next((m for m in bot_messages(fake, fake.channel_id)
                                               if m["content"].endswith("second question")), None))
        thread = fake.wait_for(lambda: thread_of(fake, question["id"]))
        fake.wait_for(lambda: bot_messages(fake, thread["id"])
                      and bot_messages(fake, thread["id"])[0]["content"].startswith("⏳"))
    (placeholder,) = bot_messages(fake, thread["id"])
    assert "You already have a question waiting" in placeholder["content"] and labels(placeholder) == []
    assert len(queued_jobs(redis, settings)) == 1 and second["id"]
