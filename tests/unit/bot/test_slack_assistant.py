"""Slack's assistant view: the suggested prompts of a new thread, and questions asked in assistant threads.

The real bolt app (with bolt's ``Assistant``) on the real Socket Mode client against the fake Slack; real Redis
and RQ, no worker: these tests look at what a person sees before an answer, and at the jobs queued.
"""

from __future__ import annotations

import time

import pytest

from tests.fakes.fake_slack import FakeSlack
from tests.helpers.queued import queued_jobs
from tests.helpers.redis_server import drop_queue
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN, bot_replies, connected_app, slack_settings, unique
from tests.helpers.slack_interactions import (
    assistant_message,
    assistant_thread_event,
    assistant_thread_root,
    element_in,
)
from worker.posters.slack_controls import AGAIN_ACTION, STOP_ACTION
from worker.queue.job_queue import job_queue

PROMPTS = ["What does HTTP 429 mean?", "Summarise this thread", "Write a haiku about on-call"]


@pytest.fixture(scope="module")
def fake():
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def settings(fake, redis):
    """One adapter for the tests that need no settings of their own (its queue is shared: positions grow)."""
    name = unique("assistant-").lower()
    yield slack_settings(fake, name, per_user_jobs=100, slack_suggested_prompts=PROMPTS)
    drop_queue(redis, name)


@pytest.fixture(scope="module")
def app(fake, settings, redis):
    with connected_app(fake, settings, redis) as bolt_app:
        yield bolt_app


def open_thread(fake, user: str = "U1") -> tuple[str, str]:
    """``user`` opens a new assistant thread: its DM and root ts (the root Slack posts for the app)."""
    dm = unique("D")
    root = assistant_thread_root(fake, dm, user)
    fake.wait_ack(fake.send_event(assistant_thread_event("started", user, dm, root, viewing=unique("C"))))
    return dm, root


def jobs_in(redis, settings, dm: str) -> list:
    return [job for job in queued_jobs(redis, settings) if job.reply_to.channel_id == dm]


def inbox_size(redis, settings) -> int:
    return redis.hlen(job_queue(settings, redis).keys.slack_inbox())


def test_a_new_assistant_thread_offers_the_suggested_prompts_from_settings(fake, redis, settings, app):
    dm, root = open_thread(fake)
    fake.wait_for(lambda: (dm, root) in fake.suggested_prompts)
    assert fake.suggested_prompts[(dm, root)]["prompts"] == [{"title": p, "message": p} for p in PROMPTS]
    # Moving around Slack beside the thread changes its context, which we do not use: no Web API call at all.
    calls = len(fake.calls)
    fake.wait_ack(fake.send_event(assistant_thread_event("context_changed", "U1", dm, root, viewing=unique("C"))))
    fake.wait_for(lambda: inbox_size(redis, settings) == 0, timeout=2)  # handled (and cleared) at once
    time.sleep(0.3)
    assert [c.method for c in fake.calls[calls:]] == []


def test_a_question_in_an_assistant_thread_waits_under_the_threads_status_without_a_placeholder(
        fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=5)
    with connected_app(fake, settings, redis):
        dm, root = open_thread(fake)
        asked = assistant_message(fake, dm, "U1", "What is DNS?", thread_ts=root)
        fake.send_event(asked)
        fake.wait_for(lambda: fake.status_of(dm, root) == "is thinking…")
        second_dm, second_root = open_thread(fake, user="U2")
        fake.send_event(assistant_message(fake, second_dm, "U2", "And what is BGP?", thread_ts=second_root))
        fake.wait_for(lambda: fake.status_of(second_dm, second_root) == "is thinking… #2 in queue")
    (job,) = jobs_in(redis, settings, dm)
    assert [(t.role, t.text) for t in job.turns] == [("user", "What is DNS?")]
    target = job.reply_to
    assert (target.assistant, target.team_id, target.thread_id, target.placeholder_id) == (
        True, fake.team_id, root, None)
    assert bot_replies(fake, dm) == []  # no "thinking…" message: the status says it
    assert fake.status_of(dm, root) == "is thinking…"  # (the first question is next; the second waits behind it)


def test_a_busy_queue_is_said_once_in_the_assistant_thread(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=1)
    with connected_app(fake, settings, redis):
        dm, root = open_thread(fake)
        fake.send_event(assistant_message(fake, dm, "U1", "first question", thread_ts=root))
        fake.wait_for(lambda: len(jobs_in(redis, settings, dm)) == 1)
        other_dm, other_root = open_thread(fake)
        fake.take_then_drop("chat.postMessage")  # Slack takes the notice, but the connection drops before it says so
        fake.send_event(assistant_message(fake, other_dm, "U1", "second question", thread_ts=other_root))
        fake.wait_for(lambda: bot_replies(fake, other_dm, other_root))
        time.sleep(0.5)  # time for a second notice to show up
    (notice,) = bot_replies(fake, other_dm, other_root)
    assert notice["text"].startswith(":hourglass:") and "You already have a question waiting" in notice["text"]
    assert fake.status_of(other_dm, other_root) == ""  # never "thinking…" for a question that was not queued
    assert len(jobs_in(redis, settings, dm)) == 1 and jobs_in(redis, settings, other_dm) == []


def test_with_native_streaming_off_a_dm_thread_question_gets_a_placeholder_as_before(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, slack_native_streaming=False)
    with connected_app(fake, settings, redis):
        dm, root = open_thread(fake)
        fake.send_event(assistant_message(fake, dm, "U1", "What is DNS?", thread_ts=root))
        fake.wait_for(lambda: len(jobs_in(redis, settings, dm)) == 1)
    (job,) = jobs_in(redis, settings, dm)
    (placeholder,) = bot_replies(fake, dm, root)
    assert not job.reply_to.assistant and job.reply_to.placeholder_id == placeholder["ts"]
    assert placeholder["text"] == "_thinking…_"
    assert element_in(placeholder, STOP_ACTION)[1]["value"] == element_in(placeholder, AGAIN_ACTION)[1]["value"] \
        == job.job_id
    assert fake.status_of(dm, root) == ""


def test_edits_in_an_assistant_thread_are_no_questions_and_leave_nothing_in_the_inbox(fake, redis, settings, app):
    dm, root = open_thread(fake)
    edit = {"type": "message", "subtype": "message_changed", "channel": dm, "channel_type": "im", "hidden": True,
            "ts": f"{time.time():.6f}", "event_ts": f"{time.time():.6f}",
            "message": {"type": "message", "user": "U1", "text": "edited", "ts": root, "thread_ts": root,
                        "subtype": "assistant_app_thread"},
            "previous_message": {"type": "message", "user": "U1", "text": "New Assistant Thread", "ts": root,
                                 "thread_ts": root, "subtype": "assistant_app_thread"}}
    fake.wait_ack(fake.send_event(edit))
    fake.wait_for(lambda: inbox_size(redis, settings) == 0, timeout=2)  # cleared by our listener, not by recovery
    assert jobs_in(redis, settings, dm) == [] and bot_replies(fake, dm) == []
