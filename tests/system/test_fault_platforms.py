"""Fault: the chat platform's API is down while answers stream. For a while every Slack Web API call and every
Discord REST call answers 5xx (500, 502, 503) or 429 with Retry-After, in alternating bursts, unprocessed.

Real parts: Redis, the worker on the demo model, our Slack app (bolt, Socket Mode) and Discord bot (discord.py)
connected to the loopback fakes, the worker's own posters (small message parts, so long answers continue in
new messages). What users see is checked: every thread ends with exactly the final answer, once: no message
posted twice, none deleted, no error text. The short outages run by default (slow); the minute-long ones are
marked long.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack
from tests.fakes.platform_outage import BURSTS, SERVER_ERRORS
from tests.helpers.discord_helpers import running_bot
from tests.helpers.fault_helpers import (
    DiscordSide,
    SlackSide,
    both_platforms_settings,
    finished,
    recording_worker,
    rq_result,
    streaming,
)
from tests.helpers.redis_server import drop_queue
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN, connected_app
from worker.queue.keys import RedisKeys

pytestmark = pytest.mark.slow
QUESTIONS = 4


@pytest.fixture(scope="module")
def slack_fake():
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def discord_fake():
    with FakeDiscord() as server:
        yield server


@pytest.fixture(scope="module")
def settings(slack_fake, discord_fake, redis, demo_dir):
    name = f"fault-platforms-{uuid.uuid4().hex[:10]}"
    yield both_platforms_settings(slack_fake, discord_fake, name, demo_dir, max_batch=QUESTIONS,
                                  per_user_jobs=QUESTIONS * 2)
    drop_queue(redis, name)


@pytest.fixture(scope="module")
def finals():
    return {}  # job id -> the final answer the worker's poster was given


@pytest.fixture(scope="module")
def worker(settings, redis, slack_fake, discord_fake, finals):
    with recording_worker(settings, redis, slack_fake, discord_fake, finals) as process:
        yield process


@pytest.fixture(scope="module")
def slack(slack_fake, settings, redis, worker):
    with connected_app(slack_fake, settings, redis):
        yield SlackSide(slack_fake, redis, RedisKeys.for_settings(settings))


@pytest.fixture(scope="module")
def discord(discord_fake, settings, redis, worker):
    with running_bot(discord_fake, settings, redis) as bot:
        yield DiscordSide(discord_fake, redis, RedisKeys.for_settings(settings))
        assert not bot.errors


def answers_survive_an_outage(side, redis, finals, outage_s: float, burst_s: float, after_finish_s: float = 0,
                              bursts: tuple[int, ...] = BURSTS) -> None:
    """Ask QUESTIONS questions; once answers stream, the platform goes down for ``outage_s``, or, with
    ``after_finish_s``, until that long after every job began posting its final answer. Check every thread."""
    deletions_before = side.deletions()
    jobs = [side.ask(user=user) for user in (["U1", "U2"] if isinstance(side, SlackSide) else [4001, 4002])
            for _ in range(QUESTIONS // 2)]
    side.fake.wait_for(lambda: any(streaming(side, job_id) for job_id in jobs), timeout=120)
    outage = side.fake.outage(outage_s, burst_s=burst_s, retry_after=1, bursts=bursts)
    if after_finish_s:
        side.fake.wait_for(lambda: all(job_id in finals for job_id in jobs), timeout=120)
        outage.end_after(after_finish_s)
    side.fake.wait_for(lambda: all(finished(redis, job_id) for job_id in jobs), timeout=outage_s + 240)
    down_s = outage.ended_at - outage.started_at
    delivered_after = max(side.last_write_at(job_id) for job_id in jobs) - outage.ended_at
    print(f"\n{type(side).__name__}: {down_s:.1f} s outage, refused {outage.refused_total} calls "
          f"({dict(outage.refused)}); last answer delivered {delivered_after:+.1f} s after it ended")

    assert outage.refused_total > 0
    for job_id in jobs:
        assert rq_result(redis, job_id)["status"] == "answered"
        final = finals[job_id]
        assert final.startswith("1") and not final.startswith("Sorry")
        assert side.visible(job_id) == side.expected(final), f"thread of {job_id} does not show its answer once"
        assert not [text for text in side.shown_ever(job_id) if "starting over" in text]  # not failed and rerun
    assert any(len(side.expected(finals[job_id])) > 1 for job_id in jobs)  # some answers went on in new messages
    assert side.deletions() == deletions_before  # nothing posted twice and tidied away


def test_slack_answers_arrive_once_after_a_short_outage(slack, redis, finals):
    answers_survive_an_outage(slack, redis, finals, outage_s=120, burst_s=2, after_finish_s=6,
                              bursts=SERVER_ERRORS)


def test_discord_answers_arrive_once_after_a_short_outage(discord, redis, finals):
    answers_survive_an_outage(discord, redis, finals, outage_s=120, burst_s=2, after_finish_s=6,
                              bursts=SERVER_ERRORS)


@pytest.mark.long
def test_slack_answers_arrive_once_after_a_minute_of_5xx_and_429(slack, redis, finals):
    started = time.monotonic()
    answers_survive_an_outage(slack, redis, finals, outage_s=60, burst_s=5)
    print(f"took {time.monotonic() - started:.0f} s")


@pytest.mark.long
def test_discord_answers_arrive_once_after_a_minute_of_5xx_and_429(discord, redis, finals):
    started = time.monotonic()
    answers_survive_an_outage(discord, redis, finals, outage_s=60, burst_s=5)
    print(f"took {time.monotonic() - started:.0f} s")
