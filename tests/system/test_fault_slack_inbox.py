"""Fault: Slack never loses a question and never shows a message twice.

* The ack window: bolt acknowledges an event before our listener has queued it. The adapter (``xwinbot slack``,
  a real subprocess) is held inside the listener (the fake delays conversations.replies for a thread question),
  killed with ``kill -9`` after the fake saw the ack, and started again: the question is answered once.
* An event the adapter could not record (its Redis down) is not acknowledged, and Slack's redelivery is taken.
* Slack's Web API down when the question arrives: it is handled again after the outage, once.
* A post Slack took before the connection dropped (no response): the thread shows it once, for the adapter's
  placeholder and for a worker's extra answer part.

Real parts: Redis, bolt on Socket Mode and slack_sdk against the loopback fake. No worker runs here: a question
"answered" is its placeholder in the thread and its job on the queue, which is what the adapter owns.
"""

from __future__ import annotations

import time
import uuid

import pytest
from rq.job import JobStatus

from tests.fakes.fake_slack import FakeSlack
from tests.helpers.fault_helpers import SlackSide, rq_status
from tests.helpers.processes import kill, settings_env, spawn
from tests.helpers.redis_server import RedisServer, drop_queue
from tests.helpers.slack_helpers import (
    APP_TOKEN,
    BOT_TOKEN,
    bot_replies,
    connected_app,
    mention,
    slack_settings,
    unique,
)
from worker.posters.slack import SlackPoster, slack_client
from worker.posters.slack_text import message_parts
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.keys import RedisKeys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake():
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def settings(fake, redis):
    name = f"slack-inbox-{uuid.uuid4().hex[:10]}"
    yield slack_settings(fake, name, metrics_port=0)
    drop_queue(redis, name)


@pytest.fixture
def slack(fake, redis, settings):
    return SlackSide(fake, redis, RedisKeys.for_settings(settings))


def queued_once(slack: SlackSide, job_id: str) -> bool:
    """The question's job is on the queue and its thread shows one placeholder (and nothing else of ours)."""
    return rq_status(slack.redis, job_id) == JobStatus.QUEUED and len(slack.visible(job_id)) == 1


def assert_queued_once(slack: SlackSide, job_id: str) -> None:
    (placeholder,) = slack.visible(job_id)
    assert placeholder.startswith("_thinking")
    assert rq_status(slack.redis, job_id) == JobStatus.QUEUED
    channel, _ = slack.threads[job_id]
    posts = [c for c in slack.fake.calls_to("chat.postMessage") if c.args.get("channel") == channel]
    assert all(c.args["metadata"]["event_payload"] == {"job_id": job_id, "part": 0} for c in posts)


def test_adapter_killed_after_the_ack_before_the_job_was_queued_answers_once_after_restart(fake, slack, settings,
                                                                                            tmp_path):
    env = settings_env(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_api_url=fake.api_url,
                       redis_url=settings.redis_url, queue_name=settings.queue_name, metrics_port=0)
    log = open(tmp_path / "slack.log", "w")
    adapter = spawn(["slack"], env, stdout=log, stderr=log)
    try:
        fake.wait_connected(timeout=60)
        channel = unique("C")
        parent = fake.add_user_message(channel, "U1", "the deploy failed with exit code 137")
        event = mention(fake, channel, "why did it fail?", thread_ts=parent)
        fake.delay("conversations.replies", 60)  # the listener reads the thread: it waits here
        fake.wait_ack(fake.send_event(event), timeout=10)
        fake.wait_for(lambda: fake.delayed, timeout=10)
        kill(adapter)  # acknowledged, not queued: before the inbox, this question was lost
        killed_at = time.time()
        job_id = slack.keys.job_id("slack", f"{channel}-{event['ts']}")
        slack.threads[job_id] = (channel, parent)
        assert rq_status(slack.redis, job_id) is None and not slack.visible(job_id)

        adapter = spawn(["slack"], env, stdout=log, stderr=log)
        fake.wait_for(lambda: queued_once(slack, job_id), timeout=60)
        print(f"\nqueued {time.time() - killed_at:.1f} s after the adapter was killed in the ack window")
        time.sleep(1.5)  # a second recovery round would have posted by now
        assert_queued_once(slack, job_id)
    finally:
        kill(adapter)


def test_an_event_redis_could_not_record_is_not_acknowledged_and_its_redelivery_is_taken(fake, slack, settings,
                                                                                          tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    own = settings.model_copy(update={"redis_url": server.url})
    redis = server.client(socket_timeout=2)
    slack = SlackSide(fake, redis, slack.keys)
    try:
        with connected_app(fake, own, redis):
            server.kill()
            event = mention(fake, unique("C"), "what is a 502?")
            first = fake.send_event(event, event_id=unique("Ev"))
            time.sleep(1.5)
            assert first not in fake.acks  # Slack will send it again
            server.start()
            event_id = next(e for e in fake.envelopes if e["envelope_id"] == first)["payload"]["event_id"]
            fake.wait_ack(fake.send_event(event, event_id=event_id, retry_attempt=1, retry_reason="timeout"))
            job_id = slack.keys.job_id("slack", f"{event['channel']}-{event['ts']}")
            slack.threads[job_id] = (event["channel"], event["ts"])
            fake.wait_for(lambda: queued_once(slack, job_id), timeout=10)
            assert_queued_once(slack, job_id)
    finally:
        server.stop()


def test_question_asked_while_slack_web_api_is_down_is_answered_once_it_is_back(fake, slack, settings, redis):
    with connected_app(fake, settings, redis):
        outage = fake.outage(12)
        job_id = slack.ask("what does HTTP 503 mean?")
        fake.wait_for(lambda: outage.refused_total > 0, timeout=10)
        outage.wait_until_over()
        fake.wait_for(lambda: queued_once(slack, job_id), timeout=20)
        print(f"\nqueued {time.time() - outage.ended_at:.1f} s after Slack's Web API was back "
              f"({outage.refused_total} calls refused)")
        time.sleep(1.5)
        assert_queued_once(slack, job_id)


def test_a_post_slack_took_before_the_connection_dropped_shows_once(fake, slack, settings, redis):
    with connected_app(fake, settings, redis):
        fake.take_then_drop("chat.postMessage")
        job_id = slack.ask("what is a reset connection?")
        fake.wait_for(lambda: queued_once(slack, job_id), timeout=10)
        assert_queued_once(slack, job_id)

    channel = unique("C")
    question = fake.add_user_message(channel, "U1", "count to three")
    job = Job(job_id=slack.keys.job_id("slack", f"{channel}-{question}"),
              turns=(JobTurn(role="user", text="count to three"),), requester=Requester(platform="slack", user_id="U1"),
              reply_to=ReplyTarget(platform="slack", channel_id=channel, thread_id=question, placeholder_id=None))
    answer = "\n\n".join(f"Paragraph {n}: " + "words " * 12 for n in range(1, 4))
    poster = SlackPoster(slack_client(BOT_TOKEN, fake.api_url), redis, slack.keys, limit=100)
    fake.take_then_drop("chat.postMessage", times=2)  # the first part, and the second
    poster.finish(job, answer)
    expected = message_parts(answer, 100)
    assert len(expected) == 3
    assert [fake.shown(channel, m["ts"]) for m in bot_replies(fake, channel, question)] == expected
