"""The Slack poster in the assistant view (a DM thread of Slack's AI app): the wait as the thread's status line, the
answer as a native stream (chat.startStream/appendStream/stopStream), the final message as in channels. Against the
loopback fake Slack through the real WebClient, with the real Redis."""

from __future__ import annotations

import time

import pytest
from slack_sdk.errors import SlackApiError

from tests.fakes.fake_slack import FakeSlack
from tests.helpers.slack_helpers import BOT_TOKEN, unique
from worker.posters.slack import SlackPoster, message_metadata, slack_client
from worker.posters.slack_controls import AGAIN_ACTION, FEEDBACK_ACTION, STOP_ACTION
from worker.posters.status_text import RESTARTING
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import JobQueue
from worker.queue.keys import RedisKeys
from worker.queue.reply_index import ReplyIndex

FINAL = "**Paris** is the capital of France, on the Seine."


@pytest.fixture(scope="module")
def fake():
    with FakeSlack(bot_token=BOT_TOKEN) as server:
        yield server


@pytest.fixture
def short_streams(fake):
    """Slack ends streams 0.3 s after they start (instead of about 5 minutes)."""
    fake.stream_lifetime_s = 0.3
    yield
    fake.stream_lifetime_s = FakeSlack.stream_lifetime_s


def assistant_job(fake) -> Job:
    """A question in an assistant DM thread, queued by the adapter without a placeholder."""
    channel = unique("D")
    question = fake.add_user_message(channel, "U1", "What is the capital of France?")
    return Job(job_id=unique("slack-"), turns=[JobTurn(role="user", text="What is the capital of France?")],
               requester=Requester(platform="slack", user_id="U1"),
               reply_to=ReplyTarget(platform="slack", channel_id=channel, thread_id=question, assistant=True,
                                    team_id=fake.team_id))


def poster(fake, redis, **kwargs) -> SlackPoster:
    return SlackPoster(slack_client(BOT_TOKEN, fake.api_url), redis, RedisKeys(), **kwargs)


def answers(fake, job) -> list[dict]:
    """The bot's messages in the job's thread."""
    return [m for m in fake.thread(job.reply_to.channel_id, job.reply_to.thread_id) if m.get("bot_id")]


def buttons(message: dict) -> list[str]:
    return [element["action_id"] for block in message.get("blocks") or []
            if block["type"] in ("actions", "context_actions") for element in block["elements"]]


def calls(fake, method: str, job) -> list[dict]:
    return [c.args for c in fake.calls_to(method) if job.reply_to.channel_id in (c.args.get("channel"),
                                                                                 c.args.get("channel_id"))]


def stream_pieces(p, job, text: str) -> None:
    """The answer arrives word by word, as StreamingReply hands it on."""
    words = text.split(" ")
    for count in range(1, len(words) + 1):
        p.update(job, " ".join(words[:count]))


def assert_final(fake, job, text: str) -> None:
    """One message shows the whole answer with Regenerate and feedback; it carries our metadata; no status."""
    (final,) = answers(fake, job)
    assert fake.shown_in(final) == text
    assert buttons(final) == [AGAIN_ACTION, FEEDBACK_ACTION]
    assert final["metadata"] == message_metadata(job.job_id, 0)
    assert not fake.streaming(job.reply_to.channel_id, final["ts"])
    assert fake.status_of(job.reply_to.channel_id, job.reply_to.thread_id) == ""


def test_the_wait_is_the_threads_status_then_the_answer_streams_natively_and_ends_with_feedback(fake, redis):
    job = assistant_job(fake)
    channel, thread = job.reply_to.channel_id, job.reply_to.thread_id
    p = poster(fake, redis)
    p.waiting(job, 3)
    assert fake.status_of(channel, thread) == "is thinking… #3 in queue"
    p.waiting(job, None)
    assert fake.status_of(channel, thread) == "is thinking…" and answers(fake, job) == []  # no placeholder

    stream_pieces(p, job, FINAL)
    (message,) = answers(fake, job)
    assert fake.streaming(channel, message["ts"]) and fake.status_of(channel, thread) == ""
    history = fake.history_of(channel, message["ts"])
    assert history[0] == "**Paris** " and len(history) > 3  # it grew, a whole word at a time
    assert all(later.startswith(earlier) for earlier, later in zip(history, history[1:]))
    (start,) = calls(fake, "chat.startStream", job)
    assert (start["thread_ts"], start["recipient_user_id"], start["recipient_team_id"]) == (thread, "U1", "T0001")
    assert ReplyIndex(redis, RedisKeys()).job_id_for_message("slack", channel, message["ts"]) == job.job_id

    p.finish(job, FINAL)
    assert_final(fake, job, FINAL)
    assert calls(fake, "chat.postMessage", job) == [] and len(calls(fake, "chat.stopStream", job)) == 1


def test_an_answer_done_before_its_first_update_is_posted_once_whole_with_no_stream(fake, redis):
    # A short answer on an idle GPU can be whole before the first update is due: one post, not a stream of one.
    job = assistant_job(fake)
    p = poster(fake, redis)
    p.waiting(job, None)
    p.finish(job, FINAL)
    assert_final(fake, job, FINAL)
    assert len(calls(fake, "chat.postMessage", job)) == 1 and calls(fake, "chat.startStream", job) == []


def test_an_answer_that_outlives_its_stream_is_finished_with_chat_update_once(fake, redis, short_streams):
    job = assistant_job(fake)
    p = poster(fake, redis)
    p.waiting(job, None)
    p.update(job, "Paris is the")
    time.sleep(0.35)  # Slack ends the stream
    stream_pieces(p, job, FINAL)
    (message,) = answers(fake, job)
    assert fake.shown_in(message) == "**Paris** is the capital of France, on the Seine."
    assert buttons(message) == [STOP_ACTION, AGAIN_ACTION]  # edited as in channels now, still running
    p.finish(job, FINAL)
    assert_final(fake, job, FINAL)


def test_a_long_answer_leaves_its_stream_and_continues_in_more_messages(fake, redis):
    job = assistant_job(fake)
    answer = "\n\n".join(f"Paragraph {n}: " + "words " * 30 for n in range(1, 6)).replace(" \n", "\n").strip()
    p = poster(fake, redis, limit=400)
    stream_pieces(p, job, answer)
    p.finish(job, answer)
    replies = answers(fake, job)
    assert len(replies) >= 3 and calls(fake, "chat.startStream", job)  # it streamed, then outgrew one message
    assert "\n\n".join(fake.shown_in(m) for m in replies) == answer
    assert [buttons(m) for m in replies] == [[]] * (len(replies) - 1) + [[AGAIN_ACTION, FEEDBACK_ACTION]]
    assert not any(fake.streaming(job.reply_to.channel_id, m["ts"]) for m in replies)


def test_a_restarted_answer_replaces_what_the_crashed_worker_streamed_in_the_same_message(fake, redis):
    job = assistant_job(fake)
    first = poster(fake, redis)
    first.waiting(job, None)
    stream_pieces(first, job, "The first attempt wrote this and then its worker died")
    (streamed,) = answers(fake, job)
    assert fake.streaming(job.reply_to.channel_id, streamed["ts"])

    second = poster(fake, redis)  # the retry on another worker
    second.restart(job)
    second.waiting(job, None)
    assert fake.shown(job.reply_to.channel_id, streamed["ts"]) == f"_{RESTARTING}_"
    stream_pieces(second, job, FINAL)
    second.finish(job, FINAL)
    assert_final(fake, job, FINAL)


def test_a_stream_started_by_a_worker_that_died_before_recording_it_is_found_and_reused(fake, redis):
    job = assistant_job(fake)
    channel, thread = job.reply_to.channel_id, job.reply_to.thread_id
    earlier = poster(fake, redis)  # an earlier answer in the thread: finished, with its metadata
    earlier_job = job.model_copy(update={"job_id": unique("slack-")})
    earlier.finish(earlier_job, "An earlier answer.")
    client = slack_client(BOT_TOKEN, fake.api_url)  # the first worker started the stream and died
    client.chat_startStream(channel=channel, thread_ts=thread, markdown_text="The first attempt ")

    retry = poster(fake, redis)
    retry.restart(job)
    retry.waiting(job, None)
    stream_pieces(retry, job, FINAL)
    retry.finish(job, FINAL)
    (before, final) = answers(fake, job)
    assert fake.shown_in(before) == "An earlier answer."
    assert fake.shown_in(final) == FINAL and buttons(final) == [AGAIN_ACTION, FEEDBACK_ACTION]
    assert final["metadata"] == message_metadata(job.job_id, 0) and not fake.streaming(channel, final["ts"])


def test_a_start_whose_connection_dropped_is_not_streamed_twice(fake, redis):
    job = assistant_job(fake)
    p = poster(fake, redis)
    fake.take_then_drop("chat.startStream")  # Slack started it; the worker never heard
    with pytest.raises(OSError):
        p.update(job, "Paris is the")  # StreamingReply skips a refused update; the next one shows it all
    stream_pieces(p, job, FINAL)
    p.finish(job, FINAL)
    assert_final(fake, job, FINAL)


def test_an_append_whose_connection_dropped_is_not_shown_twice(fake, redis):
    job = assistant_job(fake)
    p = poster(fake, redis)
    p.update(job, "Paris is the")
    fake.take_then_drop("chat.appendStream")  # taken, but not known to be: the whole text goes by chat.update
    stream_pieces(p, job, FINAL)
    (message,) = answers(fake, job)
    assert fake.shown_in(message) == FINAL
    p.finish(job, FINAL)
    assert_final(fake, job, FINAL)


def test_a_person_stopping_the_stream_in_slack_stops_the_job(fake, redis):
    job = assistant_job(fake)
    p = poster(fake, redis)
    p.update(job, "Paris is the capital")
    (message,) = answers(fake, job)
    fake.stop_stream_by_user(job.reply_to.channel_id, message["ts"])
    queue = JobQueue(redis)
    try:
        p.update(job, "Paris is the capital of France")
        assert queue.cancel_requested(job.job_id)  # the worker's poll stops the model
        appends = len(calls(fake, "chat.appendStream", job))
        p.update(job, "Paris is the capital of France, on the")
        assert len(calls(fake, "chat.appendStream", job)) == appends and not calls(fake, "chat.update", job)
        p.finish(job, "Paris is the capital of France\n\n(stopped)")
    finally:
        redis.delete(queue.keys.cancel(job.job_id))
    (final,) = answers(fake, job)
    assert fake.shown_in(final) == "Paris is the capital of France\n\n(stopped)"
    assert buttons(final) == [AGAIN_ACTION, FEEDBACK_ACTION]


def test_a_failure_ends_the_stream_and_shows_the_warning_in_its_message(fake, redis):
    job = assistant_job(fake)
    p = poster(fake, redis)
    p.waiting(job, None)
    p.update(job, "Paris is the")
    p.fail(job, "generating the answer failed")
    (message,) = answers(fake, job)
    assert message["text"] == ":warning: generating the answer failed" and buttons(message) == []
    assert not fake.streaming(job.reply_to.channel_id, message["ts"])


def test_a_failure_before_any_text_is_a_message_in_the_thread_and_the_status_goes(fake, redis):
    job = assistant_job(fake)
    p = poster(fake, redis)
    p.waiting(job, None)
    p.fail(job, "Your message is too long")
    (message,) = answers(fake, job)
    assert message["text"] == ":warning: Your message is too long"
    assert fake.status_of(job.reply_to.channel_id, job.reply_to.thread_id) == ""


def test_a_stream_whose_stop_failed_is_stopped_by_the_next_update_before_it_is_edited(fake, redis):
    job = assistant_job(fake)
    p = poster(fake, redis, limit=500)
    p.update(job, "Paris is the")
    fake.fail_next("chat.stopStream", "internal_error")
    with pytest.raises(SlackApiError, match="internal_error"):
        p.update(job, "Paris is the capital. " + "And more words. " * 40)  # outgrew one message: leave the stream
    answer = "Paris is the capital. " + "And more words. " * 50
    p.update(job, answer)  # stops the stream, then edits (an edit of a live stream would be refused)
    p.finish(job, answer.strip())
    replies = answers(fake, job)
    assert " ".join(fake.shown_in(m) for m in replies).split() == answer.split()
    assert not any(fake.streaming(job.reply_to.channel_id, m["ts"]) for m in replies)
