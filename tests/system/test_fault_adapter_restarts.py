"""Fault: a chat adapter restarts mid-answer, or is down when a question is asked.

The worker posts answers to the platform itself, so an answer in progress must still arrive, exactly once, when
the adapter dies under it; and a question asked while the adapter is down must be answered once after it is
back, where the platform delivers it again. Slack's adapter runs as a real subprocess (``xwinbot slack`` on
Socket Mode against the fake) and is killed with ``kill -9``; the fake redelivers unacknowledged events as
Slack does (``retry_attempt``, on a compressed schedule). Discord's bot runs in this process (discord.py is
pointed at the fake by patching its class attributes, which a subprocess would not get) and is stopped and
started again; Discord does not redeliver a message or a slash command sent while a bot is away, so only the
answer in progress is checked there. The worker runs in this process, on the demo model.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack
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
from tests.helpers.processes import kill, settings_env, spawn
from tests.helpers.redis_server import drop_queue
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN
from worker.queue.keys import RedisKeys

pytestmark = pytest.mark.slow
EVENT_RETRIES = (2.0, 8.0, 20.0)  # Slack: at once, after 1 and 5 minutes (compressed here)


@pytest.fixture(scope="module")
def slack_fake():
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN, event_retries=EVENT_RETRIES) as server:
        yield server


@pytest.fixture(scope="module")
def discord_fake():
    with FakeDiscord() as server:
        yield server


@pytest.fixture(scope="module")
def settings(slack_fake, discord_fake, redis, demo_dir):
    name = f"fault-adapters-{uuid.uuid4().hex[:10]}"
    yield both_platforms_settings(slack_fake, discord_fake, name, demo_dir, max_batch=2, per_user_jobs=5,
                                  metrics_port=0)
    drop_queue(redis, name)


@pytest.fixture(scope="module")
def finals():
    return {}  # job id -> the final answer the worker's poster was given


@pytest.fixture(scope="module")
def worker(settings, redis, slack_fake, discord_fake, finals):
    with recording_worker(settings, redis, slack_fake, discord_fake, finals) as process:
        yield process


@pytest.fixture
def slack_adapter(slack_fake, settings, worker, tmp_path):
    """Starts ``xwinbot slack`` (a subprocess, connected to the fake) on each call; all are killed at the end."""
    env = settings_env(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_api_url=slack_fake.api_url,
                       redis_url=settings.redis_url, queue_name=settings.queue_name,
                       per_user_jobs=settings.per_user_jobs, metrics_port=0)
    started = []

    def start():
        log = open(tmp_path / f"slack-{len(started)}.log", "w")
        started.append(spawn(["slack"], env, stdout=log, stderr=log))
        began = time.monotonic()
        slack_fake.wait_connected(timeout=120)
        print(f"\nthe Slack adapter connected {time.monotonic() - began:.1f} s after it was started")
        return started[-1]

    yield start
    for process in started:
        kill(process)


def assert_answered_once(side, redis, finals, job_id) -> None:
    assert rq_result(redis, job_id)["status"] == "answered"
    assert side.visible(job_id) == side.expected(finals[job_id]), f"thread of {job_id} does not show its answer once"
    assert not [text for text in side.shown_ever(job_id) if "starting over" in text]


def test_slack_answer_arrives_once_though_the_adapter_is_killed_mid_answer(slack_fake, settings, redis, finals,
                                                                           slack_adapter):
    slack = SlackSide(slack_fake, redis, RedisKeys.for_settings(settings))
    adapter = slack_adapter()
    job_id = slack.ask()
    slack_fake.wait_for(lambda: streaming(slack, job_id), timeout=120)
    kill(adapter)
    killed_at = time.time()
    slack_fake.wait_for(lambda: not slack_fake.connected(), timeout=30)
    slack_fake.wait_for(lambda: finished(redis, job_id), timeout=120)
    print(f"answer finished {slack.last_write_at(job_id) - killed_at:+.1f} s after the adapter was killed")
    assert_answered_once(slack, redis, finals, job_id)

    shown = slack.visible(job_id)
    slack_adapter()  # back: it answers new questions, and the old one stays answered once
    second = slack.ask()
    slack_fake.wait_for(lambda: finished(redis, second), timeout=120)
    assert_answered_once(slack, redis, finals, second)
    assert slack.visible(job_id) == shown


def test_slack_question_asked_while_the_adapter_is_down_is_answered_once_it_is_back(slack_fake, settings, redis,
                                                                                    finals, slack_adapter):
    slack = SlackSide(slack_fake, redis, RedisKeys.for_settings(settings))
    # the previous test's adapter was killed at its teardown; the fake notices the closed socket soon after
    slack_fake.wait_for(lambda: not slack_fake.connected(), timeout=30)
    asked_at = time.time()
    job_id = slack.ask()
    channel, ts = slack.threads[job_id]

    def deliveries():
        return [e for e in slack_fake.envelopes if e["payload"]["event"].get("ts") == ts]

    time.sleep(EVENT_RETRIES[0] + 0.5)  # Slack's first retry finds no connection either
    assert not deliveries()
    slack_adapter()
    slack_fake.wait_for(lambda: finished(redis, job_id), timeout=EVENT_RETRIES[-1] + 120)
    print(f"asked while the adapter was down: answered {slack.last_write_at(job_id) - asked_at:.1f} s after asking")
    assert_answered_once(slack, redis, finals, job_id)
    (delivered,) = deliveries()
    assert delivered["envelope_id"] in slack_fake.acks
    assert delivered["retry_attempt"] >= 2 and delivered["retry_reason"] == "connection_failed"

    shown = slack.visible(job_id)  # Slack sends it once more (an ack it did not see): no second answer
    envelope = slack_fake.send_event(delivered["payload"]["event"], event_id=delivered["payload"]["event_id"],
                                     retry_attempt=3, retry_reason="timeout")
    redelivered_at = slack_fake.wait_ack(envelope, timeout=30)
    time.sleep(2)
    assert slack.visible(job_id) == shown
    assert not [c for c in slack_fake.calls_to("chat.postMessage") if c.args.get("channel") == channel
                and c.at >= redelivered_at]  # not even a placeholder that flashed and went
    assert len(slack_fake.thread(channel, ts)) == 1 + len(shown)  # the question and its one answer


def test_discord_answer_arrives_once_though_the_bot_restarts_mid_answer(discord_fake, settings, redis, finals, worker):
    discord = DiscordSide(discord_fake, redis, RedisKeys.for_settings(settings))
    with running_bot(discord_fake, settings, redis) as bot:
        job_id = discord.ask()
        discord_fake.wait_for(lambda: streaming(discord, job_id), timeout=120)
        assert not bot.errors
    stopped_at = time.time()  # the bot has closed its gateway connection and HTTP session
    discord_fake.wait_for(lambda: finished(redis, job_id), timeout=120)
    print(f"\nanswer finished {discord.last_write_at(job_id) - stopped_at:+.1f} s after the bot stopped")
    assert_answered_once(discord, redis, finals, job_id)

    shown = discord.visible(job_id)
    with running_bot(discord_fake, settings, redis) as bot:
        second = discord.ask()
        discord_fake.wait_for(lambda: finished(redis, second), timeout=120)
        assert not bot.errors
    assert_answered_once(discord, redis, finals, second)
    assert discord.visible(job_id) == shown
