"""The buttons under Slack answers: Stop and Regenerate on a placeholder, 👍/👎 on an answer and a 👎's reason.

The real bolt app on the real Socket Mode client against the fake Slack (which opens modals); real Redis + RQ, no
worker. Clicks are block_actions payloads as Slack's docs print them, made from the buttons the bot really posted
(or, for an answer, posted as the worker posts it).
"""

from __future__ import annotations

import json
import time

import pytest
from slack_sdk import WebClient

from bot.conversation import ONLY_ASKER_CAN_STOP
from bot.slack.actions import FORGOTTEN_ANSWER, FORGOTTEN_FEEDBACK, REASON_ACTION, REASON_BLOCK
from tests.fakes.fake_slack import FakeSlackFiles
from tests.helpers.queued import queued_in
from tests.helpers.redis_server import drop_queue
from tests.helpers.slack_helpers import (
    APP_TOKEN,
    BOT_TOKEN,
    bot_replies,
    connected_app,
    mention,
    slack_settings,
    unique,
)
from tests.helpers.slack_interactions import (
    assistant_message,
    assistant_thread_root,
    button_action,
    click,
    element_in,
    feedback_action,
)
from worker.feedback.store import AnswerRecords, FeedbackStore, rating_id
from worker.posters.slack_controls import (
    AGAIN_ACTION,
    FEEDBACK_ACTION,
    FEEDBACK_REASON_VIEW,
    STOP_ACTION,
    answer_blocks,
    control_blocks,
)
from worker.queue.job import Job
from worker.queue.job_queue import job_queue


@pytest.fixture(scope="module")
def fake():
    with FakeSlackFiles(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def settings(fake, redis):
    name = unique("actions-").lower()
    yield slack_settings(fake, name, per_user_jobs=100, slack_allowed_users="U1,U2")
    drop_queue(redis, name)


@pytest.fixture(scope="module")
def app(fake, settings, redis):
    with connected_app(fake, settings, redis) as bolt_app:
        yield bolt_app


def asked(fake, redis, settings, user: str = "U1") -> tuple[str, Job, dict]:
    """``user`` asks in a new channel: (channel, the queued job, its placeholder as Slack stores it)."""
    channel = unique("C")
    fake.send_event(mention(fake, channel, "What is DNS?", user=user))
    fake.wait_for(lambda: len(queued_in(redis, settings, channel)) == 1)
    (job,) = queued_in(redis, settings, channel)
    (placeholder,) = bot_replies(fake, channel, job.reply_to.thread_id)
    return channel, job, placeholder


def ephemerals_to(fake, user: str, channel: str) -> list[dict]:
    return [c.args for c in fake.calls_to("chat.postEphemeral")
            if c.args.get("user") == user and c.args.get("channel") == channel]


def answered(fake, redis, settings, channel: str, job: Job, text: str = "DNS maps names to addresses.") -> dict:
    """The worker's finished answer to ``job``: its message (with the buttons and feedback) and its record."""
    client = WebClient(token=BOT_TOKEN, base_url=fake.api_url)
    ts = client.chat_postMessage(channel=channel, thread_ts=job.reply_to.thread_id, text=text,
                                 blocks=answer_blocks(text, job.job_id, running=False))["ts"]
    AnswerRecords(redis, job_queue(settings, redis).keys).remember(job.job_id, text, "demo-model", "chatml")
    return next(m for m in fake.messages(channel) if m["ts"] == ts)


def rating_of(redis, settings, job: Job, user: str):
    return FeedbackStore(redis, job_queue(settings, redis).keys).get(rating_id(job.job_id, "slack", user))


# -- Stop and Regenerate ------------------------------------------------------------------------------------

def test_a_placeholder_shows_stop_and_regenerate_under_its_status(fake, redis, settings, app):
    channel, job, placeholder = asked(fake, redis, settings)
    assert placeholder["text"] == "_thinking…_"  # what notifications and screen readers use
    assert placeholder["blocks"][0]["text"]["text"] == "_thinking…_"
    stop, again = element_in(placeholder, STOP_ACTION)[1], element_in(placeholder, AGAIN_ACTION)[1]
    assert (stop["value"], again["value"]) == (job.job_id, job.job_id)
    assert "Stop" in stop["text"]["text"] and "Regenerate" in again["text"]["text"]


def test_only_the_asker_can_stop_with_the_button(fake, redis, settings, app):
    channel, job, placeholder = asked(fake, redis, settings, user="U1")
    click(fake, channel, placeholder, button_action(placeholder, STOP_ACTION), user="U2")
    fake.wait_for(lambda: ephemerals_to(fake, "U2", channel))
    assert ephemerals_to(fake, "U2", channel)[-1]["text"] == ONLY_ASKER_CAN_STOP
    assert ephemerals_to(fake, "U2", channel)[-1]["thread_ts"] == job.reply_to.thread_id
    assert len(queued_in(redis, settings, channel)) == 1  # still queued
    click(fake, channel, placeholder, button_action(placeholder, STOP_ACTION), user="U1")
    fake.wait_for(lambda: fake.shown(channel, placeholder["ts"]) == "_(stopped before it started)_")
    assert queued_in(redis, settings, channel) == []
    stopped = next(m for m in fake.messages(channel) if m["ts"] == placeholder["ts"])
    assert "blocks" not in stopped  # nothing left to stop or regenerate on a question that was not asked


def test_regenerate_asks_again_in_the_same_thread_once_per_click_and_for_allowed_people(fake, redis, settings, app):
    channel, job, placeholder = asked(fake, redis, settings, user="U1")
    again = button_action(placeholder, AGAIN_ACTION)
    click(fake, channel, placeholder, again, user="U2")
    click(fake, channel, placeholder, again, user="U2")  # the same click delivered twice
    fake.wait_for(lambda: len(queued_in(redis, settings, channel)) == 2)
    click(fake, channel, placeholder, button_action(placeholder, AGAIN_ACTION), user="U3")  # not allowlisted
    fake.wait_for(lambda: ephemerals_to(fake, "U3", channel))
    time.sleep(0.3)  # time for a duplicate to show up
    first, second = queued_in(redis, settings, channel)
    assert second.turns == first.turns and second.requester.user_id == "U2"
    assert second.reply_to.thread_id == first.reply_to.thread_id and second.job_id != first.job_id
    assert len(bot_replies(fake, channel, first.reply_to.thread_id)) == 2  # the new answer's own placeholder
    assert "your questions" in ephemerals_to(fake, "U3", channel)[-1]["text"]


def test_the_buttons_work_after_the_adapter_restarted(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=5)
    with connected_app(fake, settings, redis):
        channel, job, placeholder = asked(fake, redis, settings)
    with connected_app(fake, settings, redis):  # a new process: nothing of the first is left but Redis
        click(fake, channel, placeholder, button_action(placeholder, AGAIN_ACTION))
        fake.wait_for(lambda: len(queued_in(redis, settings, channel)) == 2)
        click(fake, channel, placeholder, button_action(placeholder, STOP_ACTION))
        fake.wait_for(lambda: fake.shown(channel, placeholder["ts"]) == "_(stopped before it started)_")
    (left,) = queued_in(redis, settings, channel)
    assert left.job_id != job.job_id and left.reply_to.thread_id == job.reply_to.thread_id


def test_a_button_of_an_answer_no_longer_known_says_so(fake, redis, settings, app):
    channel, job, placeholder = asked(fake, redis, settings)
    redis.delete(job_queue(settings, redis).keys.indexed_job(job.job_id))  # a week later
    click(fake, channel, placeholder, button_action(placeholder, AGAIN_ACTION))
    fake.wait_for(lambda: ephemerals_to(fake, "U1", channel))
    assert ephemerals_to(fake, "U1", channel)[-1]["text"] == FORGOTTEN_ANSWER
    assert len(queued_in(redis, settings, channel)) == 1


def test_stopping_a_waiting_answer_in_an_assistant_thread_says_so_in_the_thread(fake, redis, settings, app):
    dm = unique("D")
    root = assistant_thread_root(fake, dm, "U1")
    fake.send_event(assistant_message(fake, dm, "U1", "What is DNS?", thread_ts=root))
    fake.wait_for(lambda: len(queued_in(redis, settings, dm)) == 1 and fake.status_of(dm, root))
    (job,) = queued_in(redis, settings, dm)
    # The answer's streamed message with its buttons, left by a worker that died: the job waits to be retried.
    client = WebClient(token=BOT_TOKEN, base_url=fake.api_url)
    ts = client.chat_postMessage(channel=dm, thread_ts=root, text="DNS is",
                                 blocks=control_blocks(job.job_id, running=True))["ts"]
    streamed = next(m for m in fake.messages(dm) if m["ts"] == ts)
    click(fake, dm, streamed, button_action(streamed, STOP_ACTION))
    fake.wait_for(lambda: any(m["text"] == "_(stopped before it started)_" for m in bot_replies(fake, dm, root)))
    assert queued_in(redis, settings, dm) == []


# -- feedback -----------------------------------------------------------------------------------------------

def test_a_thumbs_up_is_kept_with_the_question_and_answer_and_thanked_privately(fake, redis, settings, app):
    channel, job, _ = asked(fake, redis, settings)
    answer = answered(fake, redis, settings, channel, job)
    opened = len(fake.views)
    click(fake, channel, answer, feedback_action(answer, FEEDBACK_ACTION, positive=True), user="U2")
    fake.wait_for(lambda: ephemerals_to(fake, "U2", channel))
    rating = rating_of(redis, settings, job, "U2")
    assert (rating.rating, rating.question, rating.answer, rating.model) == (
        "good", "What is DNS?", "DNS maps names to addresses.", "demo-model")
    thanks = ephemerals_to(fake, "U2", channel)[-1]
    assert "Thanks" in thanks["text"] and thanks["thread_ts"] == job.reply_to.thread_id
    assert len(fake.views) == opened  # no questions asked about a 👍


def test_a_thumbs_down_asks_what_was_wrong_and_keeps_the_reason(fake, redis, settings, app):
    channel, job, _ = asked(fake, redis, settings)
    answer = answered(fake, redis, settings, channel, job)
    opened = len(fake.views)
    click(fake, channel, answer, feedback_action(answer, FEEDBACK_ACTION, positive=False), user="U1")
    view = fake.wait_view(opened + 1)
    assert (view["callback_id"], view["private_metadata"]) == (FEEDBACK_REASON_VIEW, job.job_id)
    (field,) = view["blocks"]
    assert field["optional"] is True and field["label"]["text"] == "What was wrong?"
    assert (field["element"]["type"], field["element"]["multiline"], field["element"]["max_length"]) == (
        "plain_text_input", True, 1000)
    fake.wait_for(lambda: rating_of(redis, settings, job, "U1") is not None)
    assert rating_of(redis, settings, job, "U1").rating == "bad"
    fake.wait_ack(fake.send_view_submission(view, user="U1",
                                            values={REASON_BLOCK: {REASON_ACTION: "  It confused DNS with DHCP. "}}))
    fake.wait_for(lambda: rating_of(redis, settings, job, "U1").reason == "It confused DNS with DHCP.")


def test_a_thumbs_down_is_kept_when_slack_will_not_open_the_reason_modal(fake, redis, settings, app):
    channel, job, _ = asked(fake, redis, settings)
    answer = answered(fake, redis, settings, channel, job)
    fake.fail_next("views.open", "expired_trigger_id")  # the click reached us after its 3 s
    click(fake, channel, answer, feedback_action(answer, FEEDBACK_ACTION, positive=False), user="U2")
    fake.wait_for(lambda: ephemerals_to(fake, "U2", channel))
    assert rating_of(redis, settings, job, "U2").rating == "bad"
    assert "Thanks" in ephemerals_to(fake, "U2", channel)[-1]["text"]


def test_feedback_on_an_answer_no_longer_known_says_so_and_keeps_nothing(fake, redis, settings, app):
    channel, job, _ = asked(fake, redis, settings)
    answer = answered(fake, redis, settings, channel, job)
    redis.delete(job_queue(settings, redis).keys.indexed_job(job.job_id))  # a week later
    opened = len(fake.views)
    click(fake, channel, answer, feedback_action(answer, FEEDBACK_ACTION, positive=False))
    fake.wait_for(lambda: ephemerals_to(fake, "U1", channel))
    assert ephemerals_to(fake, "U1", channel)[-1]["text"] == FORGOTTEN_FEEDBACK
    assert rating_of(redis, settings, job, "U1") is None and len(fake.views) == opened
    assert json.dumps(ephemerals_to(fake, "U1", channel)).count("Thanks") == 0
