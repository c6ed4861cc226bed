"""The worker with XWINBOT_BACKEND=openai, end to end: a Slack mention (fake Slack → our bolt app → Redis queue →
the worker → an OpenAI-compatible server → the Slack poster) and console questions, against a real
OpenAI-compatible HTTP server on loopback (tests/fakes/fake_openai.py). No model is loaded: the worker starts in
about a second. The wire format is all the backend knows, so the same test holds for vLLM or ``xwinbot api``."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from pydantic import SecretStr

from bot.console import ask
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.fake_slack import FakeSlack
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
from worker.queue.job_queue import job_queue
from worker.serve import WorkerProcess

KEY = "sk-e2e-secret-key-do-not-log"


@pytest.fixture(scope="module")
def openai_server():
    with FakeOpenAI(api_key=KEY, model="served-model", word_delay_s=0.02) as server:
        yield server


@pytest.fixture(scope="module")
def slack():
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def settings(slack, openai_server, redis):
    name = unique("backend-e2e-").lower()
    yield slack_settings(slack, name, backend="openai", backend_url=openai_server.base_url,
                         backend_key=SecretStr(KEY), backend_model="served-model", backend_timeout_s=2.0,
                         max_batch=4, update_interval_s=0.2, position_interval_s=0.5, per_user_jobs=5,
                         heartbeat_s=2, maintenance_interval_s=3, system_prompt="You are a test.")
    drop_queue(redis, name)


@pytest.fixture(scope="module")
def worker(settings, redis):
    process = WorkerProcess(settings, redis, serve_health=False)
    started = time.monotonic()
    process.start()
    process.start_seconds = time.monotonic() - started
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def no_key_in_logs(caplog):
    caplog.set_level(logging.DEBUG)
    yield
    assert KEY not in caplog.text


def console_answer(redis, settings, question: str) -> tuple[str, list[str], list[str]]:
    """The final text of a console question, the kinds of events seen, and any error replies."""
    text, kinds, errors = "", [], []
    for kind, piece in ask(redis, job_queue(settings, redis), [("user", question)], timeout_s=30):
        kinds.append(kind)
        if kind == "restart":
            text = ""
        elif kind == "text":
            text += piece
        elif kind == "error":
            errors.append(piece)
    return text, kinds, errors


def test_the_worker_starts_without_a_model(worker):
    assert worker.start_seconds < 10
    health = worker.health()
    assert health["engine_running"] and health["backend"] == "openai"
    assert (health["model"], health["device"]) == ("served-model", worker.settings.backend_url)
    assert not hasattr(worker.engine, "generator")  # nothing loaded


def test_a_slack_question_is_answered_through_the_backend(slack, openai_server, redis, settings, worker):
    with connected_app(slack, settings, redis):
        channel = unique("C")
        event = mention(slack, channel, "What is the capital of France?")
        slack.send_event(event)
        want = "You said: What is the capital of France?"
        slack.wait_for(lambda: any(r["text"].startswith(want) for r in bot_replies(slack, channel, event["ts"])),
                       timeout=30)
    request = openai_server.requests[-1]
    openai_server.wait_for(lambda: request.outcome == "answered")  # marked after the server's last write
    assert request.key == KEY
    assert request.body["model"] == "served-model" and request.body["stream"] is True
    assert request.body["messages"] == [{"role": "system", "content": "You are a test."},
                                        {"role": "user", "content": "What is the capital of France?"}]


def test_console_questions_in_flight_together(openai_server, redis, settings, worker):
    answers = {}

    def one(i):
        answers[i] = console_answer(redis, settings, f"question {i}" + " word" * 30)[0]

    openai_server.max_in_flight = 0
    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == {i: f"You said: question {i}" + " word" * 30 for i in range(3)}
    assert openai_server.max_in_flight >= 2


def test_a_stream_dropped_midway_is_retried_and_answered(openai_server, redis, settings, worker):
    openai_server.fail_next("drop", after_words=2)
    text, kinds, errors = console_answer(redis, settings, "please survive a dropped connection")
    assert text == "You said: please survive a dropped connection" and not errors
    assert "restart" in kinds  # the retry started the reply over
    # the server marks the answer done after its last write, which the worker may have read before that
    openai_server.wait_for(lambda: [r.outcome for r in openai_server.requests[-2:]] == ["dropped", "answered"])


def test_a_server_that_keeps_failing_gets_a_clear_reply(openai_server, redis, settings, worker):
    before = len(openai_server.requests)
    openai_server.fail_next("500", times=10)
    try:
        text, kinds, errors = console_answer(redis, settings, "will this work?")
    finally:
        with openai_server._cond:
            openai_server._failures.clear()
    assert errors == ["Sorry, the model's server did not answer (HTTP 500). Please ask again in a little while."]
    assert len(openai_server.requests) - before == 4  # the first attempt and the job's 3 retries


def test_a_wrong_model_name_is_a_clear_reply(openai_server, redis, settings, worker):
    openai_server.model, model = "another-model", openai_server.model
    try:
        _, _, errors = console_answer(redis, settings, "hello")
    finally:
        openai_server.model = model
    assert len(errors) == 1 and "has no model `served-model` (HTTP 404)" in errors[0]
