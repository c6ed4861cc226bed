"""The Slack adapter alone: the real bolt app on the real Socket Mode client, a fake Slack, real Redis + RQ.

No worker runs here, so questions stay queued: these tests look at what the adapter does before an answer.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import waitress
from slack_bolt.adapter.wsgi import SlackRequestHandler

from bot.slack.app import create_app
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.queued import queued_jobs
from tests.helpers.redis_server import free_port
from tests.helpers.slack_helpers import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    bot_replies,
    connected_app,
    mention,
    message,
    slack_settings,
    unique,
)
from worker.posters.position_notices import PositionAnnouncer
from worker.posters.registry import posters_from_settings
from worker.queue.job_queue import job_queue
from worker.settings import Settings


@pytest.fixture(scope="module")
def fake():
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


def test_mention_is_acknowledged_at_once_and_queued_with_a_placeholder_in_its_thread(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        event = mention(fake, channel, "What is the capital of France?")
        sent = time.time()
        envelope = fake.send_event(event)
        acked = fake.wait_ack(envelope) - sent
        print(f"event → ack: {acked * 1000:.0f} ms")
        assert acked < 1.0  # Slack wants 3 s
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
    (job,) = queued_jobs(redis, settings)
    assert [(t.role, t.text) for t in job.turns] == [("user", "What is the capital of France?")]
    assert job.reply_to.channel_id == channel and job.reply_to.thread_id == event["ts"]
    (placeholder,) = bot_replies(fake, channel, event["ts"])
    assert placeholder["ts"] == job.reply_to.placeholder_id and placeholder["text"] == "_thinking…_"


def test_slack_retries_and_the_second_event_for_a_message_make_one_job(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        event = mention(fake, channel, "hello?")
        first = fake.send_event(event, event_id="Ev1" + channel)
        fake.send_event(event, event_id="Ev1" + channel, retry_attempt=1, retry_reason="timeout")
        fake.send_event(event, event_id="Ev1" + channel, retry_attempt=2, retry_reason="timeout")
        # a mention inside a channel also arrives as a plain message event, with its own event id
        as_message = dict(event, type="message")
        fake.send_event(as_message, event_id="Ev2" + channel)
        fake.wait_ack(first)
        fake.wait_for(lambda: len(fake.acks) and len(queued_jobs(redis, settings)) >= 1)
        time.sleep(1.0)  # time for any duplicate to show up
    assert len(queued_jobs(redis, settings)) == 1
    posts = [c for c in fake.calls_to("chat.postMessage") if c.args.get("channel") == channel]
    assert len(posts) == 1  # one placeholder, never a second one (not even briefly)


def test_queue_position_is_shown_and_updated_while_waiting(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=5)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        events = [mention(fake, channel, f"question {i}") for i in range(3)]
        for event in events:
            fake.send_event(event)
            fake.wait_for(lambda e=event: len(bot_replies(fake, channel, e["ts"])) == 1)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 3)
        jobs = {job.reply_to.thread_id: job for job in queued_jobs(redis, settings)}

        def placeholder_text(event):
            job = jobs[event["ts"]]
            return fake.history_of(channel, job.reply_to.placeholder_id)[-1]

        fake.wait_for(lambda: placeholder_text(events[2]) == "_thinking… #3 in queue_")
        assert placeholder_text(events[1]) == "_thinking… #2 in queue_"
        assert placeholder_text(events[0]) == "_thinking…_"
        # the first question is cancelled with ❌: the others move up, and their placeholders say so
        fake.send_event({"type": "reaction_added", "user": "U1", "reaction": "x", "event_ts": f"{time.time():.6f}",
                         "item": {"type": "message", "channel": channel,
                                  "ts": jobs[events[0]["ts"]].reply_to.placeholder_id}})
        fake.wait_for(lambda: placeholder_text(events[0]) == "_(stopped before it started)_")
        announcer = PositionAnnouncer(job_queue(settings, redis), redis,
                                      lambda platform: posters_from_settings(settings, redis)[platform]())
        assert announcer.announce_once() == 2
        assert placeholder_text(events[1]) == "_thinking… #1 in queue_"
        assert placeholder_text(events[2]) == "_thinking… #2 in queue_"


def test_only_the_asker_can_cancel(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        event = mention(fake, channel, "a question", user="U1")
        fake.send_event(event)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        (job,) = queued_jobs(redis, settings)
        fake.send_event({"type": "reaction_added", "user": "U2", "reaction": "x", "event_ts": "1.1",
                         "item": {"type": "message", "channel": channel, "ts": job.reply_to.placeholder_id}})
        fake.wait_for(lambda: fake.calls_to("chat.postEphemeral")
                      and fake.calls_to("chat.postEphemeral")[-1].args.get("user") == "U2")
    assert len(queued_jobs(redis, settings)) == 1
    assert "Only the person who asked" in fake.calls_to("chat.postEphemeral")[-1].args["text"]


def test_allowlists_refuse_politely_and_privately(fake, redis, queue_name):
    allowed = unique("C")
    settings = slack_settings(fake, queue_name, slack_allowed_channels=allowed, slack_allowed_users="U1,U2")
    other = unique("C")
    with connected_app(fake, settings, redis):
        fake.send_event(mention(fake, other, "may I ask here?", user="U1"))
        fake.send_event(mention(fake, allowed, "may I ask?", user="U3"))
        fake.wait_for(lambda: len([c for c in fake.calls_to("chat.postEphemeral")
                                   if c.args.get("channel") in (allowed, other)]) == 2)
        fake.send_event(mention(fake, allowed, "and me?", user="U2"))
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
    refusals = {c.args["channel"]: c.args for c in fake.calls_to("chat.postEphemeral")
                if c.args.get("channel") in (allowed, other)}
    assert "in this channel" in refusals[other]["text"] and refusals[other]["user"] == "U1"
    assert "your questions" in refusals[allowed]["text"] and refusals[allowed]["user"] == "U3"
    assert bot_replies(fake, other) == []  # nothing public in the refused channel
    assert queued_jobs(redis, settings)[0].requester.user_id == "U2"


def test_busy_and_empty_questions_get_clear_replies(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=1)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        first, second, empty = (mention(fake, channel, "first"), mention(fake, channel, "second"),
                                mention(fake, channel, ""))
        fake.send_event(first)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        fake.send_event(second)
        fake.send_event(empty)
        fake.wait_for(lambda: all(bot_replies(fake, channel, e["ts"]) for e in (first, second, empty))
                      and bot_replies(fake, channel, second["ts"])[0]["text"].startswith(":hourglass:"))
    assert "You already have a question waiting" in bot_replies(fake, channel, second["ts"])[0]["text"]
    assert "Ask me something" in bot_replies(fake, channel, empty["ts"])[0]["text"]
    assert len(queued_jobs(redis, settings)) == 1


def test_edits_and_other_bots_are_ignored_but_thread_follow_ups_are_questions(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=5)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        first = mention(fake, channel, "first question")
        fake.send_event(first)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        thread = first["ts"]
        fake.send_event({"type": "message", "subtype": "message_changed", "channel": channel, "ts": "9.9",
                         "message": {"text": "edited", "user": "U1", "thread_ts": thread}, "channel_type": "channel"})
        fake.send_event({"type": "message", "subtype": "bot_message", "bot_id": "BOTHER", "text": "beep",
                         "channel": channel, "ts": "9.8", "thread_ts": thread, "channel_type": "channel"})
        fake.send_event({"type": "message", "bot_id": "BOTHER", "user": "UOTHERBOT", "text": "beep",
                         "channel": channel, "ts": "9.7", "thread_ts": thread, "channel_type": "channel"})
        fake.send_event(message(fake, channel, "top-level chatter without a mention"))
        follow_up = message(fake, channel, "and a follow-up", thread_ts=thread)
        fake.send_event(follow_up)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 2)
        time.sleep(0.5)
    jobs = queued_jobs(redis, settings)
    assert len(jobs) == 2
    assert [(t.role, t.text) for t in jobs[1].turns] == [("user", "first question\n\nand a follow-up")]


def test_a_follow_up_carries_the_whole_earlier_answer_not_its_shortened_fallback(fake, redis, queue_name):
    # Answers go as a markdown block beside a plain-text fallback cut to 3,000 characters: the conversation
    # must read the block, or a long answer would reach the model cut short.
    settings = slack_settings(fake, queue_name, per_user_jobs=5)
    channel = unique("C")
    long_answer = "\n\n".join(f"Paragraph {n}: " + "lorem ipsum " * 40 for n in range(12))
    assert len(long_answer) > 5000
    with connected_app(fake, settings, redis):
        first = mention(fake, channel, "first question")
        fake.send_event(first)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        posters_from_settings(settings, redis)["slack"]().finish(queued_jobs(redis, settings)[0], long_answer)
        fake.send_event(message(fake, channel, "and a follow-up", thread_ts=first["ts"]))
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 2)
    turns = queued_jobs(redis, settings)[1].turns
    assert [t.role for t in turns] == ["user", "assistant", "user"]
    assert turns[1].text == long_answer.strip()


def test_http_mode_verifies_slack_signatures(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, slack_mode="http")
    app = create_app(settings, redis)
    port = free_port()
    server = waitress.create_server(SlackRequestHandler(app), host="127.0.0.1", port=port)
    threading.Thread(target=server.run, daemon=True).start()
    channel = unique("C")
    url = f"http://127.0.0.1:{port}/slack/events"

    def post(event, secret):
        body = json.dumps(fake.event_body(event)).encode()
        request = urllib.request.Request(url, data=body, headers=FakeSlack.signed_headers(body, secret), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        forged = mention(fake, channel, "forged question")
        assert post(forged, "not-the-secret") == 401
        genuine = mention(fake, channel, "genuine question")
        assert post(genuine, SIGNING_SECRET) == 200
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        time.sleep(0.5)
    finally:
        server.close()
    (job,) = queued_jobs(redis, settings)
    assert job.turns[-1].text == "genuine question"
    assert bot_replies(fake, channel, forged["ts"]) == []


def test_followups_can_be_limited_to_mentions(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=5, slack_followups="mention")
    channel = unique("C")
    with connected_app(fake, settings, redis):
        first = mention(fake, channel, "first question")
        fake.send_event(first)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 1)
        fake.send_event(message(fake, channel, "talking among ourselves", thread_ts=first["ts"]))
        asked = mention(fake, channel, "now a question for the bot", thread_ts=first["ts"])
        fake.send_event(asked)
        fake.wait_for(lambda: len(queued_jobs(redis, settings)) == 2)
        time.sleep(0.5)
    jobs = queued_jobs(redis, settings)
    assert len(jobs) == 2
    assert jobs[1].turns[-1].text == "first question\n\ntalking among ourselves\n\nnow a question for the bot"


def test_up_starts_the_slack_adapter_when_its_tokens_are_set(fake, redis, queue_name):
    from bot.launch import start_adapters

    settings = slack_settings(fake, queue_name)
    adapters = start_adapters(settings)
    try:
        assert adapters.names == ["Slack (socket mode)"]
        fake.wait_connected()
        channel = unique("C")
        event = mention(fake, channel, "are you there?")
        fake.send_event(event)
        fake.wait_for(lambda: len(bot_replies(fake, channel, event["ts"])) == 1)
    finally:
        adapters.stop()
    assert start_adapters(Settings(slack_bot_token=None)).names == []
