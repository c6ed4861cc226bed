"""The Slack reply poster against a loopback fake of Slack, through the real slack_sdk WebClient."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from tests.fakes.fake_slack import FakeSlack
from tests.helpers.slack_helpers import BOT_TOKEN, unique
from worker.posters.slack import SlackPoster, post_once, slack_client
from worker.posters.slack_controls import AGAIN_ACTION, FEEDBACK_ACTION, STOP_ACTION
from worker.posters.slack_text import WORD_JOINER
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.keys import RedisKeys


@pytest.fixture(scope="module")
def fake():
    with FakeSlack(bot_token=BOT_TOKEN) as server:
        yield server


@pytest.fixture
def redis():
    client = Redis(host="127.0.0.1", port=6379)
    yield client
    client.close()


def posted_job(fake, thread=True) -> Job:
    """A job whose placeholder the adapter posted in a thread, as the Slack adapter does."""
    channel = unique("C")
    question_ts = fake.add_user_message(channel, "U1", "<@UBOT> hi")
    client = slack_client(BOT_TOKEN, fake.api_url)
    placeholder = client.chat_postMessage(channel=channel, thread_ts=question_ts, text="_thinking…_")["ts"]
    return Job(job_id=unique("slack-"), turns=[JobTurn(role="user", text="hi")],
               requester=Requester(platform="slack", user_id="U1"),
               reply_to=ReplyTarget(platform="slack", channel_id=channel, thread_id=question_ts,
                                    placeholder_id=placeholder))


def poster(fake, redis, **kwargs) -> SlackPoster:
    return SlackPoster(slack_client(BOT_TOKEN, fake.api_url), redis, RedisKeys(), **kwargs)


def test_streamed_updates_edit_the_placeholder(fake, redis):
    job = posted_job(fake)
    p = poster(fake, redis)
    p.waiting(job, 3)
    p.update(job, "Paris")
    p.update(job, "Paris is")
    p.finish(job, "Paris is the capital.")
    history = fake.history_of(job.reply_to.channel_id, job.reply_to.placeholder_id)
    assert history == ["_thinking…_", "_thinking… #3 in queue_", "Paris", "Paris is", "Paris is the capital."]
    assert len(fake.thread(job.reply_to.channel_id, job.reply_to.thread_id)) == 2  # question + answer only


def test_model_output_pings_no_one(fake, redis):
    job = posted_job(fake)
    answer = "Attention <!channel> <!here> <!everyone> <@U123> <!subteam^S1|@oncall> @here!"
    poster(fake, redis).finish(job, answer)
    text = fake.history_of(job.reply_to.channel_id, job.reply_to.placeholder_id)[-1]
    assert "<!" not in text and "<@" not in text
    assert f"<{WORD_JOINER}!channel>" in text and f"@{WORD_JOINER}here!" in text
    assert text.replace(WORD_JOINER, "") == answer  # shown exactly as written


def test_answers_go_as_markdown_blocks_and_statuses_as_text(fake, redis):
    job = posted_job(fake)
    p = poster(fake, redis)
    p.update(job, "**Paris** is [the capital](https://en.wikipedia.org/wiki/Paris")  # a link still being written
    p.finish(job, "**Paris** is [the capital](https://en.wikipedia.org/wiki/Paris).")
    edits = [c.args for c in fake.calls_to("chat.update") if c.args.get("ts") == job.reply_to.placeholder_id]
    assert [e["blocks"][0] for e in edits] == [
        {"type": "markdown", "text": "**Paris** is"},
        {"type": "markdown", "text": "**Paris** is [the capital](https://en.wikipedia.org/wiki/Paris)."}]
    assert not any("markdown_text" in e for e in edits)  # Slack refuses markdown_text with blocks
    p.fail(job, "the worker crashed")  # a status after an answer replaces the answer's blocks
    assert fake.calls_to("chat.update")[-1].args["blocks"] == []
    assert fake.shown(job.reply_to.channel_id, job.reply_to.placeholder_id) == ":warning: the worker crashed"


def test_a_long_answer_continues_in_further_thread_messages(fake, redis):
    job = posted_job(fake)
    paragraphs = [f"Part {i}. " + "All work and no play makes Jack a dull boy. " * 20 for i in range(30)]
    answer = "\n\n".join(p.strip() for p in paragraphs)
    poster(fake, redis).finish(job, answer)
    replies = [m for m in fake.thread(job.reply_to.channel_id, job.reply_to.thread_id) if m.get("bot_id")]
    assert len(replies) == 3  # ~27,000 characters in messages of at most 12,000
    assert replies[0]["ts"] == job.reply_to.placeholder_id
    shown = [fake.shown(job.reply_to.channel_id, m["ts"]) for m in replies]
    assert all(len(text) <= 12_000 for text in shown)
    assert "\n\n".join(shown) == answer


def test_msg_too_long_makes_the_poster_cut_smaller(fake, redis):
    job = posted_job(fake)
    fake.max_markdown_chars = 2000  # a workspace whose limit is lower than we assumed
    try:
        poster(fake, redis).finish(job, " ".join(["word"] * 1200))  # 5,999 characters
    finally:
        fake.max_markdown_chars = 12_000
    replies = [m for m in fake.thread(job.reply_to.channel_id, job.reply_to.thread_id) if m.get("bot_id")]
    shown = [fake.shown(job.reply_to.channel_id, m["ts"]) for m in replies]
    assert len(shown) >= 4 and all(len(text) <= 2000 for text in shown)
    assert " ".join(shown) == " ".join(["word"] * 1200)


def test_rate_limited_update_waits_for_retry_after(fake, redis):
    job = posted_job(fake)
    fake.rate_limit("chat.update", times=1, retry_after=1)
    started = time.monotonic()
    poster(fake, redis).update(job, "Paris")
    assert time.monotonic() - started >= 1.0
    updates = fake.calls_to("chat.update")
    assert [c.status for c in updates[-2:]] == [429, 200]
    assert fake.history_of(job.reply_to.channel_id, job.reply_to.placeholder_id)[-1] == "Paris"


def test_a_restarted_answer_reuses_its_messages_and_removes_extra_ones(fake, redis):
    job = posted_job(fake)
    long_answer = "\n\n".join(["x" * 11_000] * 3)
    poster(fake, redis).update(job, long_answer)  # the first attempt streamed 3 messages, then its worker died
    second = poster(fake, redis)  # the retry on another worker
    second.restart(job)
    second.finish(job, "Short answer.")
    replies = [m for m in fake.thread(job.reply_to.channel_id, job.reply_to.thread_id) if m.get("bot_id")]
    assert [m["text"] for m in replies] == ["Short answer."]


def test_a_part_posted_by_a_worker_that_died_before_recording_it_is_not_posted_again(fake, redis):
    job = posted_job(fake)
    answer = "\n\n".join(["y" * 11_000] * 2)
    target = job.reply_to  # the first worker posted part 1, then died before remembering its ts
    post_once(slack_client(BOT_TOKEN, fake.api_url), channel=target.channel_id, thread_ts=target.thread_id,
              job_id=job.job_id, part=1, markdown_text="y" * 11_000)
    second = poster(fake, redis)  # the retry on another worker
    second.restart(job)
    second.finish(job, answer)
    replies = [m for m in fake.thread(target.channel_id, target.thread_id) if m.get("bot_id")]
    assert [fake.shown(target.channel_id, m["ts"]) for m in replies] == ["y" * 11_000] * 2


def test_failure_is_shown_in_the_placeholder(fake, redis):
    job = posted_job(fake)
    poster(fake, redis).fail(job, "Your message is too long: 5000 tokens; the limit is 1024 tokens.")
    assert fake.history_of(job.reply_to.channel_id, job.reply_to.placeholder_id)[-1] == (
        ":warning: Your message is too long: 5000 tokens; the limit is 1024 tokens."
    )


def buttons(message: dict) -> list[str]:
    """The action ids of the buttons under a message, in order (Stop, Regenerate, the 👍/👎 feedback)."""
    return [element["action_id"] for block in message.get("blocks") or []
            if block["type"] in ("actions", "context_actions") for element in block["elements"]]


def message(fake, channel: str, ts: str) -> dict:
    return next(m for m in fake.messages(channel) if m["ts"] == ts)


def test_a_channel_answer_has_stop_and_regenerate_while_running_then_regenerate_and_feedback(fake, redis):
    job = posted_job(fake)
    channel, ts = job.reply_to.channel_id, job.reply_to.placeholder_id
    p = poster(fake, redis)
    p.waiting(job, 2)
    assert buttons(message(fake, channel, ts)) == [STOP_ACTION, AGAIN_ACTION]
    assert fake.shown(channel, ts) == "_thinking… #2 in queue_"
    p.update(job, "Paris is")
    assert buttons(message(fake, channel, ts)) == [STOP_ACTION, AGAIN_ACTION]
    p.finish(job, "Paris is the capital.")
    final = message(fake, channel, ts)
    assert buttons(final) == [AGAIN_ACTION, FEEDBACK_ACTION]
    assert fake.shown(channel, ts) == final["text"] == "Paris is the capital."
    values = [e.get("value") for b in final["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert values == [job.job_id]  # the button finds its job after either process restarted


def test_only_the_last_message_of_a_long_answer_has_the_buttons(fake, redis):
    job = posted_job(fake)
    answer = "\n\n".join(["z" * 11_000] * 3)
    p = poster(fake, redis)
    p.update(job, answer)
    replies = [m for m in fake.thread(job.reply_to.channel_id, job.reply_to.thread_id) if m.get("bot_id")]
    assert [buttons(m) for m in replies] == [[], [], [STOP_ACTION, AGAIN_ACTION]]
    p.finish(job, "\n\n".join(["z" * 11_000] * 2))  # shorter in the end: the third message goes
    replies = [m for m in fake.thread(job.reply_to.channel_id, job.reply_to.thread_id) if m.get("bot_id")]
    assert [buttons(m) for m in replies] == [[], [AGAIN_ACTION, FEEDBACK_ACTION]]
    assert all(len(m["text"]) <= 3000 for m in replies)  # the notification text is cut, the blocks are whole


def test_the_notification_text_beside_the_blocks_pings_no_one(fake, redis):
    job = posted_job(fake)
    poster(fake, redis).finish(job, "Hey <!channel> and <@U123>, R&D says: use a < b.")
    final = message(fake, job.reply_to.channel_id, job.reply_to.placeholder_id)
    assert "<!" not in final["text"] and "<@" not in final["text"]
    shown_as_written = "Hey &lt;!channel&gt; and &lt;@U123&gt;, R&amp;D says: use a &lt; b."  # mrkdwn's escapes
    assert final["text"].replace(WORD_JOINER, "") == shown_as_written


def test_a_failure_shows_the_warning_without_buttons(fake, redis):
    job = posted_job(fake)
    p = poster(fake, redis)
    p.update(job, "Paris is")
    p.fail(job, "the model crashed")
    final = message(fake, job.reply_to.channel_id, job.reply_to.placeholder_id)
    assert buttons(final) == [] and final["text"] == ":warning: the model crashed"
