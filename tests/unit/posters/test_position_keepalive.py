"""Queue positions kept alive: a Slack assistant thread's status line lapses unless set again, so the announcer
tells a queued assistant job its position again before it does; a placeholder in a channel is edited only when
its position changes. Real RQ queue in the real Redis, the real WebClient against the loopback fake Slack."""

from __future__ import annotations

import time

import pytest

from tests.fakes.fake_slack import FakeSlack
from tests.helpers.redis_server import drop_queue
from tests.helpers.slack_helpers import BOT_TOKEN, unique
from worker.posters.position_notices import PositionAnnouncer
from worker.posters.slack import SlackPoster, slack_client
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import JobQueue

STATUS_LIFETIME_S = 0.6  # Slack's is two minutes


@pytest.fixture
def fake():
    with FakeSlack(bot_token=BOT_TOKEN) as server:
        server.status_lifetime_s = STATUS_LIFETIME_S
        yield server


@pytest.fixture
def queue(redis):
    name = unique("keepalive-").lower()
    yield JobQueue(redis, name=name)
    drop_queue(redis, name)


def question(fake, user: str, assistant: bool) -> Job:
    channel = unique("D" if assistant else "C")
    asked = fake.add_user_message(channel, user, "What is the capital of France?")
    placeholder = None if assistant else slack_client(BOT_TOKEN, fake.api_url).chat_postMessage(
        channel=channel, thread_ts=asked, text="_thinking…_")["ts"]
    return Job(job_id=unique("slack-"), turns=[JobTurn(role="user", text="What is the capital of France?")],
               requester=Requester(platform="slack", user_id=user),
               reply_to=ReplyTarget(platform="slack", channel_id=channel, thread_id=asked, placeholder_id=placeholder,
                                    assistant=assistant, team_id=fake.team_id))


def test_a_queued_assistant_job_keeps_its_status_for_many_lifetimes_and_a_placeholder_is_edited_once(
        fake, redis, queue):
    in_assistant, in_channel = question(fake, "U1", assistant=True), question(fake, "U2", assistant=False)
    queue.enqueue(in_assistant)
    queue.enqueue(in_channel)
    client = slack_client(BOT_TOKEN, fake.api_url)
    announcer = PositionAnnouncer(queue, redis, lambda platform: SlackPoster(client, redis, queue.keys,
                                                                             status_refresh_s=0.2), interval_s=0.1)
    status = lambda: fake.status_of(in_assistant.reply_to.channel_id, in_assistant.reply_to.thread_id)  # noqa: E731
    announcer.start()
    try:
        fake.wait_for(lambda: status() == "is thinking… #1 in queue", timeout=5)
        until = time.monotonic() + 4 * STATUS_LIFETIME_S
        while time.monotonic() < until:
            assert status() == "is thinking… #1 in queue"
            time.sleep(0.05)
    finally:
        announcer.stop()
    placeholder_edits = [c for c in fake.calls_to("chat.update") if c.args["ts"] == in_channel.reply_to.placeholder_id]
    assert [fake.shown_in(m) for m in fake.messages(in_channel.reply_to.channel_id)][1:] == ["_thinking… #2 in queue_"]
    assert len(placeholder_edits) == 1  # told once: its position did not change
    time.sleep(STATUS_LIFETIME_S)
    assert status() == ""  # without the announcer it lapses, as Slack's does
