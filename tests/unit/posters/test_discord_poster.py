"""The Discord reply poster against a loopback fake of Discord, over real HTTP (requests)."""

from __future__ import annotations

import time

import pytest

from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import button_names
from worker.posters.discord import DiscordPoster
from worker.posters.discord_rest import DiscordRest
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.keys import RedisKeys


@pytest.fixture(scope="module")
def fake():
    with FakeDiscord() as server:
        yield server


def rest(fake) -> DiscordRest:
    return DiscordRest(fake.bot_token, fake.api_base)


def thread_job(fake, job_id: str) -> Job:
    """A job whose placeholder the adapter posted in a new thread, as the Discord adapter does."""
    question = fake.user_message(fake.channel_id, 4001, "a question", mentions_bot=True)
    thread = fake.add_thread(fake.channel_id, "a question", owner_id=fake.bot_user_id, message_id=int(question["id"]))
    placeholder = rest(fake).send(str(thread), {"content": "thinking…", "allowed_mentions": {"parse": []}})
    return Job(job_id=job_id, turns=[JobTurn(role="user", text="a question")],
               requester=Requester(platform="discord", user_id="4001"),
               reply_to=ReplyTarget(platform="discord", channel_id=str(thread), thread_id=str(thread),
                                    placeholder_id=placeholder["id"]))


def bot_texts(fake, channel_id) -> list[str]:
    return [m["content"] for m in fake.messages(channel_id) if int(m["author"]["id"]) == fake.bot_user_id]


def test_streaming_edits_the_placeholder_and_ends_with_regenerate_and_feedback(fake, redis):
    job = thread_job(fake, f"discord-test-{time.time_ns()}")
    poster = DiscordPoster(rest(fake), redis, RedisKeys())
    poster.waiting(job, 2)
    poster.update(job, "Paris")
    running = fake.message(job.reply_to.placeholder_id)
    poster.finish(job, "Paris is the capital of France.")
    thread = job.reply_to.thread_id
    assert fake.history_of(thread, job.reply_to.placeholder_id) == [
        "thinking…", "thinking… #2 in queue", "Paris", "Paris is the capital of France."]
    assert button_names(running) == ["Stop", "Regenerate"]
    final = fake.message(job.reply_to.placeholder_id)
    assert button_names(final) == ["Regenerate", "👍", "👎"]
    assert [c["custom_id"] for row in final["components"] for c in row["components"]] == [
        f"xwinbot:again:{job.job_id}", f"xwinbot:good:{job.job_id}", f"xwinbot:bad:{job.job_id}"]


def test_a_failed_answer_has_no_buttons(fake, redis):
    job = thread_job(fake, f"discord-test-{time.time_ns()}")
    poster = DiscordPoster(rest(fake), redis, RedisKeys())
    poster.update(job, "Par")
    poster.fail(job, "The model stopped.")
    assert fake.message(job.reply_to.placeholder_id)["components"] == []


def test_every_button_of_the_longest_job_id_fits_discords_custom_id():
    from worker.posters.discord_controls import BUTTON_JOB_ID_CHARS, answer_buttons

    longest = "j" * BUTTON_JOB_ID_CHARS
    ids = [c["custom_id"] for running in (True, False) for row in answer_buttons(longest, running)
           for c in row["components"]]
    assert len(ids) == 5 and all(len(custom_id) <= 100 for custom_id in ids)
    assert answer_buttons(longest + "j", running=False) == []


def test_a_long_answer_is_split_at_2000_characters_with_code_fences_closed_and_reopened(fake, redis):
    job = thread_job(fake, f"discord-test-{time.time_ns()}")
    code = "\n".join(f"    total += values[{i}]  # step {i}" for i in range(120))
    answer = ("Here is the loop:\n\n```python\ndef add(values):\n    total = 0\n" + code
              + "\n    return total\n```\n\nDone.")
    DiscordPoster(rest(fake), redis, RedisKeys()).finish(job, answer)
    texts = bot_texts(fake, job.reply_to.thread_id)
    assert len(texts) >= 3 and all(len(t) <= 2000 for t in texts)
    for text in texts:
        assert text.count("```") % 2 == 0  # every message renders its code block on its own
    assert texts[1].startswith("```python\n")
    only_last_has_buttons = [bool(fake.message(m["id"])["components"]) for m in fake.messages(job.reply_to.thread_id)
                             if int(m["author"]["id"]) == fake.bot_user_id]
    assert only_last_has_buttons == [False] * (len(texts) - 1) + [True]


def test_every_message_pings_no_one(fake, redis):
    job = thread_job(fake, f"discord-test-{time.time_ns()}")
    DiscordPoster(rest(fake), redis, RedisKeys()).finish(job, "@everyone @here <@&2> <@4002> look! " + "x" * 2100)
    sends = [r for r in fake.requests
             if r.method in ("POST", "PATCH") and r.path.startswith(f"/channels/{job.reply_to.thread_id}")]
    assert len(sends) >= 3
    assert all(r.json["allowed_mentions"] == {"parse": []} for r in sends)


def test_rate_limited_edit_waits_for_retry_after(fake, redis):
    job = thread_job(fake, f"discord-test-{time.time_ns()}")
    fake.rate_limit("PATCH", rf"/channels/{job.reply_to.thread_id}/messages/", times=1, retry_after=0.8)
    started = time.monotonic()
    DiscordPoster(rest(fake), redis, RedisKeys()).update(job, "Paris")
    assert time.monotonic() - started >= 0.8
    edits = fake.requests_to("PATCH", rf"/channels/{job.reply_to.thread_id}/messages/")
    assert [r.status for r in edits[-2:]] == [429, 200]
    assert fake.history_of(job.reply_to.thread_id, job.reply_to.placeholder_id)[-1] == "Paris"


def test_a_restarted_answer_reuses_its_messages_and_removes_extra_ones(fake, redis):
    job = thread_job(fake, f"discord-test-{time.time_ns()}")
    DiscordPoster(rest(fake), redis, RedisKeys()).update(job, "\n\n".join(["y" * 1500] * 3))
    retry = DiscordPoster(rest(fake), redis, RedisKeys())
    retry.restart(job)
    retry.finish(job, "Short.")
    assert bot_texts(fake, job.reply_to.thread_id) == ["Short."]
