"""👍/👎 under a finished Discord answer: the real discord.py bot on a fake Discord, real Redis, the real poster.

No worker runs: a question is asked with /ask, then the worker's Discord poster finishes its answer, which puts
Regenerate, 👍 and 👎 on it; people click those as Discord sends clicks (interaction type 3) and submit the
reason modal (type 5).
"""

from __future__ import annotations

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.discord.feedback import FORGOTTEN_ANSWER, NOT_REACHABLE
from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import discord_settings, running_bot
from tests.helpers.redis_server import RedisServer
from worker.feedback.store import FeedbackStore, Rating, rating_id
from worker.posters.discord import DiscordPoster
from worker.posters.discord_rest import DiscordRest
from worker.queue.job import Job
from worker.queue.keys import RedisKeys
from worker.queue.reply_index import ReplyIndex

EPHEMERAL = 64
MODAL = 9
ASKER, READER, ANOTHER_READER = 4001, 4002, 4003


@pytest.fixture(scope="module")
def fake():
    with FakeDiscord() as server:
        server.add_member(ANOTHER_READER)
        yield server


@pytest.fixture
def settings(fake, queue_name):
    return discord_settings(fake, queue_name)


@pytest.fixture
def bot(fake, settings, redis):
    """Our bot (starting one takes a tenth of a second: each test has its own, as each process would)."""
    with running_bot(fake, settings, redis) as running:
        yield running


def finished_answer(fake, settings, redis, prompt: str) -> Job:
    """``prompt`` asked with /ask and its answer finished by the worker's poster."""
    keys = RedisKeys.for_settings(settings)
    asked = fake.slash_command("ask", {"prompt": prompt}, user_id=ASKER)
    job = fake.wait_for(lambda: ReplyIndex(redis, keys).job(keys.job_id("discord", f"ask-{asked['id']}")))
    DiscordPoster(DiscordRest(fake.bot_token, fake.api_base), redis, keys).finish(job, f"The answer to {prompt!r}.")
    return job


def click(fake, job: Job, button: str, user_id: int) -> dict:
    """``user_id`` clicks 👍 ("good") or 👎 ("bad") under the answer; the bot's first response to it."""
    clicked = fake.click(f"xwinbot:{button}:{job.job_id}", job.reply_to.placeholder_id, job.reply_to.thread_id,
                         user_id=user_id)
    return fake.wait_for(lambda: fake.interaction_responses(clicked["id"]))[0] | {"interaction": clicked["id"]}


def rating(redis, settings, job: Job, user_id: int) -> Rating | None:
    store = FeedbackStore(redis, RedisKeys.for_settings(settings))
    return store.get(rating_id(job.job_id, "discord", str(user_id)))


def private_text(response: dict) -> str:
    assert response["type"] == 4 and response["data"]["flags"] == EPHEMERAL, response
    return response["data"]["content"]


def test_thumbs_up_is_recorded_per_person_and_thanked_privately(fake, settings, redis, bot):
    job = finished_answer(fake, settings, redis, "what is DNS?")
    assert "Thanks" in private_text(click(fake, job, "good", READER))
    first = rating(redis, settings, job, READER)
    assert (first.rating, first.question, first.reason) == ("good", "what is DNS?", None)
    # another reader's rating is their own; the first reader changing their mind replaces theirs
    assert "Thanks" in private_text(click(fake, job, "good", ANOTHER_READER))
    assert click(fake, job, "bad", READER)["type"] == MODAL
    assert rating(redis, settings, job, READER).rating == "bad"
    assert rating(redis, settings, job, ANOTHER_READER).rating == "good"
    assert not bot.errors


def test_thumbs_down_is_recorded_at_once_and_its_modal_adds_the_reason(fake, settings, redis, bot):
    job = finished_answer(fake, settings, redis, "how do I undo a git commit?")
    opened = click(fake, job, "bad", READER)
    assert opened["type"] == MODAL and opened["data"]["title"] == "What was wrong?"
    assert rating(redis, settings, job, READER).rating == "bad"  # before the modal is even submitted
    (row,) = opened["data"]["components"]
    text_input = row.get("component") or row["components"][0]
    assert text_input["required"] is False and text_input["style"] == 2 and text_input["max_length"] == 1000
    submitted = fake.submit_modal(opened["interaction"], {text_input["custom_id"]: "It suggested git push --force."},
                                  user_id=READER)
    thanks = fake.wait_for(lambda: fake.interaction_responses(submitted["id"]))[0]
    assert "Thanks" in private_text(thanks)
    stored = rating(redis, settings, job, READER)
    assert (stored.rating, stored.reason) == ("bad", "It suggested git push --force.")
    # 👎 again, modal left empty: the reason given before stays
    again = click(fake, job, "bad", READER)
    submitted = fake.submit_modal(again["interaction"], user_id=READER)
    fake.wait_for(lambda: fake.interaction_responses(submitted["id"]))
    assert rating(redis, settings, job, READER).reason == "It suggested git push --force."
    assert not bot.errors


def test_an_answer_the_reply_index_forgot_says_so(fake, settings, redis, bot):
    job = finished_answer(fake, settings, redis, "a question from long ago")
    redis.delete(RedisKeys.for_settings(settings).indexed_job(job.job_id))  # its week in the index is over
    for button in ("good", "bad"):
        assert private_text(click(fake, job, button, READER)) == FORGOTTEN_ANSWER
    assert rating(redis, settings, job, READER) is None
    assert not bot.errors


def test_feedback_works_after_the_adapter_restarted(fake, settings, redis):
    with running_bot(fake, settings, redis):
        job = finished_answer(fake, settings, redis, "persistent?")
    with running_bot(fake, settings, redis) as restarted:  # a new process: it never saw this answer
        assert "Thanks" in private_text(click(fake, job, "good", READER))
        assert click(fake, job, "bad", ANOTHER_READER)["type"] == MODAL
        assert not restarted.errors
    assert rating(redis, settings, job, READER).rating == "good"
    assert rating(redis, settings, job, ANOTHER_READER).rating == "bad"


def test_feedback_while_redis_is_down_is_answered_privately(fake, settings, tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        own_redis = server.client(retry=Retry(NoBackoff(), 0))  # down is down at once: no waiting out retries
        with running_bot(fake, settings, own_redis) as bot:
            job = finished_answer(fake, settings, own_redis, "is Redis up?")
            server.kill()
            for button in ("good", "bad"):
                assert private_text(click(fake, job, button, READER)) == NOT_REACHABLE
            assert not bot.errors
