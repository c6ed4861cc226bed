"""Slack's documented payloads (tests/data/slack_payloads/*.json, each naming its docs page in "_source") replayed
through the real bolt app: over Socket Mode against the fake Slack, and a few over HTTP with a valid signature.

Each is handled as intended (a job, answered in the right thread; ❌ on an answer cancels it; a new assistant thread
gets its suggested prompts) or ignored quietly:
no exception escapes a listener, no post lands outside the question's thread, no log record at WARNING or above.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import waitress
from slack_bolt.adapter.wsgi import SlackRequestHandler

from bot.slack.app import create_app
from tests.fakes.fake_slack import FakeSlack, FakeSlackFiles
from tests.helpers.queued import queued_in
from tests.helpers.redis_server import drop_queue, free_port
from tests.helpers.slack_helpers import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    connected_app,
    mention,
    slack_settings,
    unique,
)
from worker.queue.job import Job

PAYLOADS = Path(__file__).parents[2] / "data" / "slack_payloads"
EVENT_FILES = sorted(p for p in PAYLOADS.glob("*.json") if "event" in json.loads(p.read_text()))


@pytest.fixture(scope="module")
def fake():
    with FakeSlackFiles(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def settings(fake, redis):
    name = unique("payloads-").lower()
    yield slack_settings(fake, name, per_user_jobs=100)
    drop_queue(redis, name)


@pytest.fixture(scope="module")
def app(fake, settings, redis):
    with connected_app(fake, settings, redis) as bolt_app:
        yield bolt_app


def filled_in(fake, template: dict, values: dict) -> dict:
    text = json.dumps(template)
    for name, value in values.items():
        text = text.replace(json.dumps(name), json.dumps(value)).replace(name, str(value))
    return json.loads(text)


def a_bot_thread(fake, redis, settings, channel: str) -> Job:
    """A question answered in ``channel`` (its job queued, its placeholder posted): the thread payloads refer to."""
    event = mention(fake, channel, "root question")
    fake.send_event(event)
    fake.wait_for(lambda: len(queued_in(redis, settings, channel)) == 1)
    return queued_in(redis, settings, channel)[0]


def problems_logged(caplog) -> list[str]:
    return [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.stem)
def test_a_documented_payload_is_handled_or_ignored_quietly(path, fake, redis, settings, app, caplog):
    doc = json.loads(path.read_text())
    assert doc["_source"].startswith("https://docs.slack.dev/")
    channel, dm = unique("C"), unique("D")
    root = a_bot_thread(fake, redis, settings, channel)
    template = doc["event"]
    in_thread = template.get("thread_ts") == "TS_THREAD"
    target_channel = dm if template.get("channel") == "D_CHANNEL" else channel
    new_ts = fake.add_user_message(target_channel, "U1", "stored", thread_ts=root.reply_to.thread_id if in_thread
                                   else None)
    event = filled_in(fake, template, {
        "C_CHANNEL": channel, "D_CHANNEL": dm, "U_ASKER": "U1", "U_BOT": fake.bot_user_id, "U_OTHER": "U9",
        "B_OTHER": "BOTHER", "TS_THREAD": root.reply_to.thread_id, "TS_ANSWER": root.reply_to.placeholder_id,
        "TS_NEW": new_ts, "TS_EVENT": f"{time.time():.6f}",
        "FILES": [fake.file_object("notes.txt", b"the cache is cold")]})
    before = {c: len(queued_in(redis, settings, c)) for c in (channel, dm)}
    posts_before = len(fake.calls_to("chat.postMessage"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fake.wait_ack(fake.send_event(event))
        if doc["expect"] == "job":
            fake.wait_for(lambda: len(queued_in(redis, settings, target_channel)) == before[target_channel] + 1)
        elif doc["expect"] == "cancelled":
            fake.wait_for(lambda: len(queued_in(redis, settings, channel)) == 0)
        elif doc["expect"] == "prompts":
            thread = event["assistant_thread"]
            fake.wait_for(lambda: (thread["channel_id"], thread["thread_ts"]) in fake.suggested_prompts)
        time.sleep(0.4)  # time for anything unintended to show up
        assert problems_logged(caplog) == []
    after = {c: len(queued_in(redis, settings, c)) for c in (channel, dm)}
    if doc["expect"] == "job":
        job = queued_in(redis, settings, target_channel)[-1]
        assert job.reply_to.thread_id == (event[doc["reply_thread"]] if doc["reply_thread"] else None)
        assert after == {**before, target_channel: before[target_channel] + 1}
    elif doc["expect"] == "cancelled":
        assert after[channel] == 0
    else:
        assert after == before
    for call in fake.calls_to("chat.postMessage")[posts_before:]:
        assert call.args.get("thread_ts") or call.args["channel"].startswith("D"), call.args


def test_http_mode_answers_url_verification_and_handles_signed_events(fake, redis, settings, caplog):
    http_settings = settings.model_copy(update={"slack_mode": "http"})
    server = waitress.create_server(SlackRequestHandler(create_app(http_settings, redis)), host="127.0.0.1",
                                    port=free_port())
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{server.effective_port}/slack/events"

    def post(body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=FakeSlack.signed_headers(data, SIGNING_SECRET))
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()

    channel = unique("C")
    try:
        with caplog.at_level(logging.WARNING):
            verification = json.loads((PAYLOADS / "url_verification.json").read_text())["body"]
            status, body = post(verification)
            assert status == 200 and verification["challenge"] in body.decode()
            for name in ("app_mention", "message_changed", "unknown_event_type"):
                template = json.loads((PAYLOADS / f"{name}.json").read_text())["event"]
                ts = fake.add_user_message(channel, "U1", "stored")
                event = filled_in(fake, template, {"C_CHANNEL": channel, "U_ASKER": "U1", "U_BOT": fake.bot_user_id,
                                                   "TS_NEW": ts, "TS_THREAD": ts, "TS_EVENT": ts})
                assert post(fake.event_body(event))[0] == 200
            fake.wait_for(lambda: len(queued_in(redis, settings, channel)) == 1)
            time.sleep(0.4)
            assert problems_logged(caplog) == []
    finally:
        server.close()
    assert all(c.args.get("thread_ts") for c in fake.calls_to("chat.postMessage") if c.args["channel"] == channel)
