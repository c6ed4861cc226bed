"""A reset connection after Discord took a message must not show the message twice: the poster's retry
(``deliver``) sends the same nonce with ``enforce_nonce`` and the fake, as Discord does, returns the message it
already created."""

from __future__ import annotations

import time

import pytest

from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import bot_messages
from worker.posters.base import deliver
from worker.posters.discord import DiscordPoster, message_parts
from worker.posters.discord_rest import DiscordRest
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.keys import RedisKeys

LIMIT = 40  # small parts: the answer below takes three messages


@pytest.fixture(scope="module")
def fake():
    with FakeDiscord() as server:
        yield server


def placeholder_job(fake, rest: DiscordRest) -> Job:
    thread = fake.add_thread(fake.channel_id, "a question", owner_id=fake.bot_user_id)
    placeholder = rest.send(str(thread), {"content": "thinking…"})
    return Job(job_id=f"discord-test-{time.time_ns()}", turns=[JobTurn(role="user", text="a question")],
               requester=Requester(platform="discord", user_id="4001"),
               reply_to=ReplyTarget(platform="discord", channel_id=str(thread), thread_id=str(thread),
                                    placeholder_id=placeholder["id"]))


def test_a_part_discord_took_before_the_connection_dropped_is_posted_once(fake, redis):
    rest = DiscordRest(fake.bot_token, fake.api_base)
    job = placeholder_job(fake, rest)
    thread = job.reply_to.thread_id
    answer = "One two three four five six seven eight. " * 2 + "Nine ten eleven twelve."
    fake.drop_after_processing("POST", rf"^/channels/{thread}/messages$", times=1)

    deliver(lambda: DiscordPoster(rest, redis, RedisKeys(), limit=LIMIT).finish(job, answer), first_delay=0.05)

    assert [m["content"] for m in bot_messages(fake, thread)] == message_parts(answer, LIMIT)
    sends = fake.requests_to("POST", rf"^/channels/{thread}/messages$")[1:]  # after the placeholder
    assert sends[0].status == 0 and sends[0].json["nonce"] == sends[1].json["nonce"]  # dropped, then sent again
    assert all(s.json["enforce_nonce"] is True and len(s.json["nonce"]) <= 25 for s in sends)


def test_the_same_nonce_later_in_another_channel_or_after_a_delete_is_a_new_message(fake):
    rest = DiscordRest(fake.bot_token, fake.api_base)
    first = rest.send(str(fake.channel_id), {"content": "a"}, nonce="n1")
    assert rest.send(str(fake.channel_id), {"content": "a"}, nonce="n1")["id"] == first["id"]
    other = fake.add_thread(fake.channel_id, "elsewhere", owner_id=fake.bot_user_id)
    assert rest.send(str(other), {"content": "a"}, nonce="n1")["id"] != first["id"]
    rest.delete(str(fake.channel_id), first["id"])
    assert rest.send(str(fake.channel_id), {"content": "a"}, nonce="n1")["id"] != first["id"]
