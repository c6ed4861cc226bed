"""Slack end to end: a mention in a fake Slack → our bolt app → Redis queue → the worker on the demo model →
the Slack poster streams the answer into the thread. Real sockets everywhere; marked slow (loads the model)."""

from __future__ import annotations

import json
import time

import pytest
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from tests.fakes.fake_slack import FakeSlackFiles
from tests.helpers.redis_server import drop_queue, free_port
from tests.helpers.slack_helpers import (
    APP_TOKEN,
    BOT_TOKEN,
    bot_replies,
    connected_app,
    mention,
    message,
    slack_settings,
    unique,
)
from tests.helpers.slack_interactions import (
    assistant_message,
    assistant_thread_event,
    assistant_thread_root,
    click,
    feedback_action,
)
from tests.unit.ops.test_metrics import value
from worker.cli import main
from worker.feedback.store import FeedbackStore, rating_id
from worker.ops.health_server import start_health_server
from worker.posters.slack_controls import AGAIN_ACTION, FEEDBACK_ACTION
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import SERIALIZER, job_queue
from worker.queue.keys import RedisKeys
from worker.queue.reply_index import ReplyIndex
from worker.serve import WorkerProcess
from worker.settings import Settings

pytestmark = pytest.mark.slow
COUNTING = "Count from 1 to 300, one number per line."


@pytest.fixture(scope="module")
def fake():
    with FakeSlackFiles(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:  # with views.open, for the 👎 modal
        yield server


@pytest.fixture(scope="module")
def settings(fake, redis, demo_dir):
    name = unique("slack-e2e-").lower()
    yield slack_settings(fake, name, model=str(demo_dir), device="cpu", temperature=0.0, max_new_tokens=100,
                         max_context_tokens=1024, max_batch=4, update_interval_s=0.3, position_interval_s=0.5,
                         per_user_jobs=5)
    drop_queue(redis, name)


@pytest.fixture(scope="module")
def keys(settings):
    return RedisKeys.for_settings(settings)


@pytest.fixture(scope="module")
def worker(settings, redis):
    process = WorkerProcess(settings, redis)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def app(fake, settings, redis, worker):
    with connected_app(fake, settings, redis) as bolt_app:
        yield bolt_app


def answer_of(fake, redis, keys, channel, thread_ts, timeout=60.0) -> dict:
    """The bot's newest reply in the thread, once the job behind it has finished."""
    index = ReplyIndex(redis, keys)

    def finished():
        replies = bot_replies(fake, channel, thread_ts)
        job_id = replies and index.job_id_for_message("slack", channel, replies[-1]["ts"])
        if not job_id:
            return False
        try:  # the adapter links the placeholder to its job just before it enqueues the job
            rq_job = RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER)
        except NoSuchJobError:
            return False
        return rq_job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED)

    fake.wait_for(finished, timeout=timeout)
    return bot_replies(fake, channel, thread_ts)[-1]


def rq_result(redis, job_id) -> dict:
    return RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).return_value()


def job_turns(redis, job_id) -> list[dict]:
    return json.loads(RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).args[0])["turns"]


def test_mention_gets_a_streamed_answer_in_its_thread(fake, redis, keys, app):
    channel = unique("C")
    event = mention(fake, channel, "What is the capital of France?")
    fake.send_event(event)
    reply = answer_of(fake, redis, keys, channel, event["ts"])
    assert "Paris" in reply["text"]
    history = fake.history_of(channel, reply["ts"])
    assert history[0] == "_thinking…_"
    answer_edits = [text for text in history if not text.startswith("_thinking")]
    assert len(answer_edits) >= 2  # it streamed: partial text first, the whole answer last
    assert all(reply["text"].startswith(text.rstrip()) for text in answer_edits)


def test_first_streamed_edit_follows_the_first_token_within_a_second(fake, redis, keys, app, settings):
    channel = unique("C")
    event = mention(fake, channel, "Name three colours.")
    fake.send_event(event)
    reply = answer_of(fake, redis, keys, channel, event["ts"])
    first_token_at = rq_result(redis, keys.job_id("slack", f"{channel}-{event['ts']}"))["first_token_at"]
    edits = [c for c in fake.calls_to("chat.update") if c.args.get("ts") == reply["ts"]
             and not str(c.args.get("text", "")).startswith("_thinking")]
    delay = edits[0].at - first_token_at
    print(f"first token → first streamed edit: {delay * 1000:.0f} ms")
    assert delay <= 1.0, f"first streamed edit came {delay:.2f} s after the first token"


def test_follow_up_in_the_thread_carries_the_history(fake, redis, keys, app):
    channel = unique("C")
    first = mention(fake, channel, "What is the capital of France?")
    fake.send_event(first)
    answer = answer_of(fake, redis, keys, channel, first["ts"])
    follow_up = message(fake, channel, "And what is it famous for?", thread_ts=first["ts"])
    fake.send_event(follow_up)
    fake.wait_for(lambda: len(bot_replies(fake, channel, first["ts"])) == 2)
    second = answer_of(fake, redis, keys, channel, first["ts"])
    assert second["ts"] != answer["ts"] and second["text"]
    turns = job_turns(redis, keys.job_id("slack", f"{channel}-{follow_up['ts']}"))
    assert [(t["role"], t["text"]) for t in turns] == [
        ("user", "What is the capital of France?"),
        ("assistant", answer["text"]),
        ("user", "And what is it famous for?"),
    ]


def test_direct_messages_are_one_conversation(fake, redis, keys, app):
    dm = unique("D")
    first = message(fake, dm, "What is the capital of France?", channel_type="im")
    fake.send_event(first)
    fake.wait_for(lambda: any("Paris" in m["text"] for m in bot_replies(fake, dm)), timeout=60)
    second = message(fake, dm, "Thanks! Say it once more.", channel_type="im")
    fake.send_event(second)
    fake.wait_for(lambda: len(bot_replies(fake, dm)) == 2 and not bot_replies(fake, dm)[-1]["text"].startswith("_"),
                  timeout=60)
    replies = bot_replies(fake, dm)
    assert all("thread_ts" not in m for m in replies)  # top-level in the DM, not in threads
    roles = [t["role"] for t in job_turns(redis, keys.job_id("slack", f"{dm}-{second['ts']}"))]
    assert roles == ["user", "assistant", "user"]


def test_regenerate_reaction_answers_again_in_the_same_thread(fake, redis, keys, app):
    channel = unique("C")
    event = mention(fake, channel, "What is the capital of France?")
    fake.send_event(event)
    first = answer_of(fake, redis, keys, channel, event["ts"])
    fake.send_event({"type": "reaction_added", "user": "U2", "reaction": "repeat", "event_ts": f"{time.time():.6f}",
                     "item": {"type": "message", "channel": channel, "ts": first["ts"]}})
    fake.wait_for(lambda: len(bot_replies(fake, channel, event["ts"])) == 2)
    again = answer_of(fake, redis, keys, channel, event["ts"])
    assert again["ts"] != first["ts"] and "Paris" in again["text"]


def test_cancel_reaction_stops_a_running_answer(fake, redis, app):
    channel = unique("C")
    event = mention(fake, channel, COUNTING)
    fake.send_event(event)
    fake.wait_for(lambda: bot_replies(fake, channel, event["ts"])
                  and not bot_replies(fake, channel, event["ts"])[0]["text"].startswith("_thinking"), timeout=60)
    placeholder = bot_replies(fake, channel, event["ts"])[0]
    fake.send_event({"type": "reaction_added", "user": "U1", "reaction": "x", "event_ts": f"{time.time():.6f}",
                     "item": {"type": "message", "channel": channel, "ts": placeholder["ts"]}})
    fake.wait_for(lambda: bot_replies(fake, channel, event["ts"])[0]["text"].endswith("(stopped)"), timeout=30)


def test_too_long_question_is_told_the_limit(fake, redis, keys, app):
    channel = unique("C")
    event = mention(fake, channel, "Summarise this: " + "blah " * 3000)
    fake.send_event(event)
    reply = answer_of(fake, redis, keys, channel, event["ts"])
    assert reply["text"].startswith(":warning: Your message is too long")
    assert "the limit is" in reply["text"]


def test_an_assistant_thread_question_shows_its_status_then_streams_natively_then_the_answer_once(
        fake, redis, keys, settings, worker):
    dm = unique("D")
    asked = fake.add_user_message(dm, "U1", COUNTING)
    job = Job(job_id=keys.job_id("slack", f"{dm}-{asked}"), turns=[JobTurn(role="user", text=COUNTING)],
              requester=Requester(platform="slack", user_id="U1"),
              reply_to=ReplyTarget(platform="slack", channel_id=dm, thread_id=asked, assistant=True,
                                   team_id=fake.team_id))
    job_queue(settings, redis).enqueue(job)  # as the adapter queues a question asked in the assistant view
    fake.wait_for(lambda: RQJob.fetch(job.job_id, connection=redis, serializer=SERIALIZER).get_status()
                  in (JobStatus.FINISHED, JobStatus.FAILED), timeout=60)

    in_dm = [c for c in fake.calls if dm in (c.args.get("channel"), c.args.get("channel_id"))]
    methods = [c.method for c in in_dm]
    assert methods.index("assistant.threads.setStatus") < methods.index("chat.startStream")  # status first
    assert in_dm[methods.index("assistant.threads.setStatus")].args["status"] == "is thinking…"
    assert methods.count("chat.startStream") == 1 and methods.count("chat.appendStream") >= 1
    (answer,) = bot_replies(fake, dm, asked)  # no placeholder, and the answer once
    final = fake.shown_in(answer)
    streamed = fake.history_of(dm, answer["ts"])[:-1]
    assert len(streamed) >= 2 and all(final.startswith(text) for text in streamed)  # it grew, then was finished
    assert final.startswith("1") and fake.status_of(dm, asked) == ""
    assert [e["action_id"] for b in answer["blocks"] if b["type"] in ("actions", "context_actions")
            for e in b["elements"]] == [AGAIN_ACTION, FEEDBACK_ACTION]


def test_the_assistant_view_from_a_new_thread_to_a_rated_answer_listed_and_counted(
        fake, redis, keys, settings, app, monkeypatch, capsys):
    # The whole AI-app flow through the real adapter and worker: a new thread offers the suggested prompts, a
    # question there shows the loading status, its answer streams natively into one message, and a 👎 with
    # its reason is listed by `xwinbot feedback` and counted on /metrics.
    dm = unique("D")
    thread = assistant_thread_root(fake, dm, "U7")
    fake.wait_ack(fake.send_event(assistant_thread_event("started", "U7", dm, thread)))
    fake.wait_for(lambda: (dm, thread) in fake.suggested_prompts)
    offered = fake.suggested_prompts[(dm, thread)]["prompts"]
    assert [p["message"] for p in offered] == settings.slack_suggested_prompts

    fake.send_event(assistant_message(fake, dm, "U7", COUNTING, thread))
    answer = answer_of(fake, redis, keys, dm, thread)
    assert [s for c, t, s in fake.status_history if (c, t) == (dm, thread)][0] == "is thinking…"
    assert fake.status_of(dm, thread) == ""  # gone with the answer
    assert len([c for c in fake.calls_to("chat.startStream") if c.args.get("channel") == dm]) == 1
    assert len(bot_replies(fake, dm, thread)) == 1 and fake.shown_in(answer).startswith("1")

    opened = len(fake.views)
    click(fake, dm, answer, feedback_action(answer, FEEDBACK_ACTION, positive=False), user="U7")
    view = fake.wait_view(opened + 1)
    fake.wait_ack(fake.send_view_submission(view, user="U7", values={"reason": {"reason": "It stopped at 40."}}))
    rating = rating_id(ReplyIndex(redis, keys).job_id_for_message("slack", dm, answer["ts"]), "slack", "U7")
    store = FeedbackStore(redis, keys)
    fake.wait_for(lambda: getattr(store.get(rating), "reason", None) == "It stopped at 40.")

    monkeypatch.setenv("XWINBOT_QUEUE_NAME", settings.queue_name)
    assert main(["feedback", "--rating", "bad"]) == 0
    listed = capsys.readouterr().out
    assert "👎" in listed and "It stopped at 40." in listed and COUNTING in listed and "answer: 1" in listed
    server = start_health_server(Settings(queue_name=settings.queue_name, metrics_port=free_port(),
                                          metrics_host="127.0.0.1"), "slack")
    try:
        assert value(server.port, "xwinbot_feedback_total", platform="slack", rating="bad") == 1
    finally:
        server.stop()
