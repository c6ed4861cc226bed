"""Slack: files on questions, channel rules, the "Ask about this message" shortcut, and where failure notices go.

The real bolt app on the real Socket Mode client against the fake Slack (which serves files and opens views);
real Redis + RQ, no worker: these tests look at the jobs the adapter queues and what it posts.
"""

from __future__ import annotations

import json
import time

import pytest

from bot.slack.app import create_app
from bot.slack.files import FILE_QUESTION, token_allowed
from bot.slack.shortcut import DEFAULT_QUESTION
from tests.fakes.fake_slack import FakeSlackFiles
from tests.helpers.files import FileServer, pdf_with_text
from tests.helpers.queued import queued_jobs
from tests.helpers.slack_helpers import (
    APP_TOKEN,
    BOT_TOKEN,
    bot_replies,
    connected_app,
    mention,
    slack_settings,
    unique,
)
from worker.ops.preflight import SettingsProblem
from worker.queue.job import Job


@pytest.fixture(scope="module")
def fake():
    with FakeSlackFiles(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


def one_job(fake, redis, settings, count: int = 1) -> Job:
    fake.wait_for(lambda: len(queued_jobs(redis, settings)) >= count)
    return queued_jobs(redis, settings)[count - 1]


def top_level_posts(fake, channel: str) -> list:
    return [c for c in fake.calls_to("chat.postMessage") if c.args.get("channel") == channel
            and not c.args.get("thread_ts")]


# -- files --------------------------------------------------------------------------------------------------

def test_the_bot_token_goes_only_to_slack_or_the_configured_api_host():
    api = "http://127.0.0.1:4000/api/"
    assert token_allowed("https://files.slack.com/files-pri/T1-F1/download/a.txt", "https://slack.com/api/")
    assert token_allowed("https://slack.com/x", api)
    assert token_allowed("http://127.0.0.1:4000/files-pri/T1-F1/a.txt", api)
    for url in ("http://files.slack.com/a", "https://files.slack.com.evil.example/a", "https://evilslack.com/a",
                "http://127.0.0.1:4001/a", "https://example.com/a", "file:///etc/passwd", "", "http://[::1"):
        assert not token_allowed(url, api), url


def test_a_file_shared_without_words_in_a_bot_thread_is_a_question_about_it(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=5)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        first = mention(fake, channel, "Can you help with our deploy?")
        fake.send_event(first)
        one_job(fake, redis, settings)
        shared = fake.share_file(channel, "U1", "deploy.log", b"ERROR: port 8080 already in use\n",
                                 thread_ts=first["ts"])
        fake.send_event(shared)
        job = one_job(fake, redis, settings, 2)
    assert job.turns[-1].text.endswith(FILE_QUESTION)
    assert [(a.name, a.text) for a in job.attachments] == [("deploy.log", "ERROR: port 8080 already in use\n")]
    assert job.notes == () and job.reply_to.thread_id == first["ts"]
    assert fake.file_downloads[-1][1] == BOT_TOKEN  # fetched with the bot token, from url_private_download
    assert "/download/" in fake.file_downloads[-1][0]
    assert "Ask me something" not in " ".join(m["text"] for m in bot_replies(fake, channel, first["ts"]))


def test_a_mention_reads_text_and_pdf_files_and_names_the_ones_it_skips(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, attachment_max_bytes=10_000)
    channel = unique("C")
    files = [fake.file_object("notes.md", b"# Notes\nthe cache is cold"),
             fake.file_object("report.pdf", pdf_with_text("Revenue grew 12 percent"), "application/pdf", "pdf"),
             fake.file_object("photo.png", b"\x89PNG....", "image/png", "png"),
             fake.file_object("huge.txt", b"x" * 20_000)]
    gone = dict(fake.file_object("gone.txt", b"deleted"), id="FGONE")
    gone["url_private_download"] = gone["url_private_download"].replace(gone["url_private_download"].split("/")[-3],
                                                                        f"{fake.team_id}-FGONE")
    with connected_app(fake, settings, redis):
        shared = fake.share_file(channel, "U1", "", b"", files=files + [gone],
                                 text=f"<@{fake.bot_user_id}> summarise these")
        event = {**shared, "type": "app_mention"}
        event.pop("subtype")
        fake.send_event(event)
        job = one_job(fake, redis, settings)
    assert job.turns[-1].text == "summarise these"
    assert [a.name for a in job.attachments] == ["notes.md", "report.pdf"]
    assert "Revenue grew 12 percent" in job.attachments[1].text
    notes = "\n".join(job.notes)
    assert "`photo.png` was skipped: images are not read" in notes
    assert "`huge.txt` was skipped: it is too large" in notes
    assert "`gone.txt` was skipped: it could not be downloaded (HTTP 404)" in notes
    assert job.reply_to.thread_id == event["ts"]


def test_the_token_is_not_sent_to_a_file_url_elsewhere(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name)
    channel = unique("C")
    server = FileServer({"/a.txt": b"hello from elsewhere"})
    with server.running(), connected_app(fake, settings, redis):
        planted = dict(fake.file_object("a.txt", b""), url_private_download=server.url + "/a.txt")
        event = {**mention(fake, channel, "what is in it?"), "files": [planted]}
        fake.send_event(event)
        job = one_job(fake, redis, settings)
    (path, headers), = server.requests
    assert "Authorization" not in headers and BOT_TOKEN not in json.dumps(headers)
    assert job.attachments[0].text == "hello from elsewhere"


def test_a_bad_token_gets_403_and_an_unknown_file_404_from_the_fake(fake):
    import requests

    file = fake.file_object("x.txt", b"secret")
    assert requests.get(file["url_private"], timeout=5).status_code == 403
    wrong = {"Authorization": "Bearer xoxb-wrong"}
    assert requests.get(file["url_private"], headers=wrong, timeout=5).status_code == 403
    ok = requests.get(file["url_private_download"], headers={"Authorization": f"Bearer {BOT_TOKEN}"}, timeout=5)
    assert ok.status_code == 200 and ok.content == b"secret"
    unknown = file["url_private"].replace(file["id"], "FNOPE")
    assert requests.get(unknown, headers={"Authorization": f"Bearer {BOT_TOKEN}"}, timeout=5).status_code == 404


# -- channel rules ------------------------------------------------------------------------------------------

def test_a_channels_rule_sets_the_system_prompt_and_sampling(fake, redis, queue_name, tmp_path):
    ruled, other = unique("C"), unique("C")
    path = tmp_path / "channels.yaml"
    path.write_text(f"slack:\n  {ruled}: {{system_prompt: \"You are the SRE team's bot.\", temperature: 0.2,"
                    " max_new_tokens: 50}\n")
    settings = slack_settings(fake, queue_name, channels_file=str(path), per_user_jobs=5)
    with connected_app(fake, settings, redis):
        fake.send_event(mention(fake, ruled, "is prod up?"))
        first = one_job(fake, redis, settings)
        fake.send_event(mention(fake, other, "is prod up?"))
        second = one_job(fake, redis, settings, 2)
    assert first.system_prompt == "You are the SRE team's bot."
    assert (first.overrides.temperature, first.overrides.max_new_tokens) == (0.2, 50)
    assert second.system_prompt is None and second.overrides.temperature is None


def test_a_bad_channels_file_stops_the_start_with_its_problems(fake, redis, queue_name, tmp_path):
    path = tmp_path / "channels.yaml"
    path.write_text("slack:\n  C1: {temperature: 9, colour: blue}\n")
    with pytest.raises(SettingsProblem) as err:
        create_app(slack_settings(fake, queue_name, channels_file=str(path)), redis)
    assert str(path) in str(err.value) and "temperature" in str(err.value) and "colour" in str(err.value)


# -- the message shortcut -----------------------------------------------------------------------------------

def ask_about(fake, channel: str, message: dict, user: str = "U1", question: str | None = None) -> dict:
    """Pick the shortcut on ``message``, then submit the modal it opened; returns the view."""
    opened = len(fake.views)
    fake.wait_ack(fake.send_message_shortcut(channel, message, user=user))
    view = fake.wait_view(opened + 1)
    values = {"question": {"question": question}} if question is not None else {}
    fake.wait_ack(fake.send_view_submission(view, user=user, values=values))
    return view


def test_ask_about_this_message_answers_in_its_thread_with_the_message_and_its_files(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=5)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        ts = fake.add_user_message(channel, "U7", "Deploy failed: <https://ci.example/123|build 123> is red")
        (message,) = [m for m in fake.messages(channel) if m["ts"] == ts]
        view = ask_about(fake, channel, message, question="Why did it fail?")
        job = one_job(fake, redis, settings)
        shared = fake.share_file(channel, "U8", "trace.txt", b"Traceback: KeyError 'port'", text="see trace")
        ask_about(fake, channel, {k: v for k, v in shared.items() if k not in ("channel", "event_ts")})
        with_file = one_job(fake, redis, settings, 2)
    assert view["callback_id"] == "ask_about_message"
    assert json.loads(view["private_metadata"])["ts"] == ts
    assert "What do you want to know about it?" in json.dumps(view["blocks"])
    assert job.turns[-1].text == "Why did it fail?"
    assert [(a.name, a.text) for a in job.attachments] == [("the message from <@U7>",
                                                            "Deploy failed: build 123 is red")]
    assert job.reply_to.thread_id == ts and job.requester.user_id == "U1"
    (placeholder,) = bot_replies(fake, channel, ts)
    assert placeholder["thread_ts"] == ts and placeholder["ts"] == job.reply_to.placeholder_id
    assert with_file.turns[-1].text == DEFAULT_QUESTION
    assert [a.name for a in with_file.attachments] == ["the message from <@U8>", "trace.txt"]
    assert top_level_posts(fake, channel) == []


def test_the_shortcut_answers_a_thread_reply_in_that_thread_and_respects_the_allowlist(fake, redis, queue_name):
    channel = unique("C")
    settings = slack_settings(fake, queue_name, slack_allowed_users="U1")
    with connected_app(fake, settings, redis):
        root = fake.add_user_message(channel, "U2", "root")
        reply = fake.add_user_message(channel, "U2", "a reply", thread_ts=root)
        (message,) = [m for m in fake.messages(channel) if m["ts"] == reply]
        opened = len(fake.views)
        fake.wait_ack(fake.send_message_shortcut(channel, message, user="U3"))
        refused = fake.wait_view(opened + 1)
        ask_about(fake, channel, message, user="U1")
        job = one_job(fake, redis, settings)
    assert "your questions" in json.dumps(refused["blocks"]) and "submit" not in refused
    assert job.reply_to.thread_id == root and job.attachments[0].text == "a reply"


# -- failure notices go into the thread they are about ------------------------------------------------------

def test_a_failing_cancel_reaction_apologises_in_the_answers_thread(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        event = mention(fake, channel, "a question")
        fake.send_event(event)
        job = one_job(fake, redis, settings)
        fake.fail_next("chat.update", "ratelimited")
        fake.send_event({"type": "reaction_added", "user": "U1", "reaction": "x", "event_ts": f"{time.time():.6f}",
                         "item_user": fake.bot_user_id,
                         "item": {"type": "message", "channel": channel, "ts": job.reply_to.placeholder_id}})
        fake.wait_for(lambda: any("Sorry" in m["text"] for m in bot_replies(fake, channel, event["ts"])))
    assert queued_jobs(redis, settings) == []  # it was cancelled all the same
    assert top_level_posts(fake, channel) == []


def test_a_failing_regenerate_and_a_failing_question_apologise_in_their_threads(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=5)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        event = mention(fake, channel, "a question")
        fake.send_event(event)
        job = one_job(fake, redis, settings)
        fake.fail_next("chat.postMessage", "fatal_error")  # the new placeholder
        fake.send_event({"type": "reaction_added", "user": "U1", "reaction": "repeat",
                         "event_ts": f"{time.time():.6f}",
                         "item": {"type": "message", "channel": channel, "ts": job.reply_to.placeholder_id}})
        fake.wait_for(lambda: any("Sorry" in m["text"] for m in bot_replies(fake, channel, event["ts"])))
        fake.fail_next("conversations.replies", "fatal_error")
        follow_up = mention(fake, channel, "and then?", thread_ts=event["ts"])
        fake.send_event(follow_up)
        fake.wait_for(lambda: sum("Sorry" in m["text"] for m in bot_replies(fake, channel, event["ts"])) == 2)
    assert top_level_posts(fake, channel) == []


def test_a_failing_shortcut_question_apologises_in_the_messages_thread(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        ts = fake.add_user_message(channel, "U7", "some message")
        (message,) = [m for m in fake.messages(channel) if m["ts"] == ts]
        fake.fail_next("conversations.replies", "fatal_error")
        ask_about(fake, channel, message)
        fake.wait_for(lambda: any("Sorry" in m["text"] for m in bot_replies(fake, channel, ts)))
    assert top_level_posts(fake, channel) == []


def test_a_reaction_without_a_user_is_ignored_quietly(fake, redis, queue_name, caplog):
    settings = slack_settings(fake, queue_name)
    channel = unique("C")
    with connected_app(fake, settings, redis):
        event = mention(fake, channel, "a question")
        fake.send_event(event)
        job = one_job(fake, redis, settings)
        with caplog.at_level("WARNING"):
            envelope = fake.send_event({"type": "reaction_added", "reaction": "x", "event_ts": "1.2",
                                        "item": {"type": "message", "channel": channel,
                                                 "ts": job.reply_to.placeholder_id}})
            fake.wait_ack(envelope)
            time.sleep(0.5)
    assert [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
    assert len(queued_jobs(redis, settings)) == 1
