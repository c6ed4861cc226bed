"""The console client on the real Redis: what a question waits for, reads that outlast the socket timeout,
Ctrl-C cancelling, and bad questions refused in one line."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest
from redis import Redis
from rq import Worker

from bot.console import (
    EMPTY_QUESTION,
    LOADING,
    NO_WORKER,
    READ_SLICE_S,
    BadQuestion,
    ask,
    checked_question,
    read_reply,
    waiting_for,
)
from tests.helpers.console_job import question
from worker.cli import main
from worker.ops.status import loading_announced, workers_loading
from worker.queue.job import MAX_TEXT_CHARS
from worker.queue.job_queue import JobQueue
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import SOCKET_TIMEOUT_S, redis_client
from worker.queue.rq_workers import DEQUEUE_POLL_S

REDIS_URL = "redis://127.0.0.1:6379/0"


def socket_timeout_of(client: Redis) -> float:
    return client.connection_pool.connection_kwargs["socket_timeout"]


def test_every_blocking_read_is_shorter_than_the_socket_timeout_of_the_client_it_uses():
    client_timeout = socket_timeout_of(redis_client(REDIS_URL, retry_s=1))
    assert client_timeout == SOCKET_TIMEOUT_S
    assert READ_SLICE_S < client_timeout / 2  # the console's XREAD
    assert DEQUEUE_POLL_S < client_timeout / 2  # RQ's BLMOVE/BLPOP in each worker thread


def test_a_reply_that_takes_longer_than_the_socket_timeout_is_still_read(queue_name):
    keys = RedisKeys(queue_name)
    slow = Redis.from_url(REDIS_URL, socket_timeout=2)  # a short timeout keeps the test short
    writer = Redis.from_url(REDIS_URL)
    job_id = f"{queue_name}-console-slow"
    threading.Timer(3.5, lambda: writer.xadd(keys.reply_stream(job_id), {"kind": "final", "text": "Paris"})).start()
    started = time.monotonic()
    assert list(read_reply(slow, keys, job_id, timeout_s=30)) == [("final", "Paris")]
    assert time.monotonic() - started > 3


def test_the_reader_says_what_a_question_waits_for(redis, queue_name):
    queue = JobQueue(redis, name=queue_name)
    queue.enqueue(question("first", user="a"))
    second = question("second", user="b")
    queue.enqueue(second)
    assert waiting_for(queue, second.job_id) == f"#2 in the queue; {NO_WORKER}"
    with loading_announced(redis, queue.keys, "host.1.abc"):
        assert workers_loading(redis, queue.keys) == 1
        assert waiting_for(queue, second.job_id) == f"#2 in the queue; {LOADING}"
    assert workers_loading(redis, queue.keys) == 0
    worker = Worker([queue.rq], connection=redis, name=f"{queue_name}-worker")
    worker.register_birth()
    try:
        assert waiting_for(queue, second.job_id) == "#2 in the queue"
    finally:
        worker.register_death()


def test_a_loading_claim_lapses_when_its_worker_dies_while_loading(redis, queue_name):
    keys = RedisKeys(queue_name)
    redis.zadd(keys.workers_loading(), {"killed.1.abc": time.time() - 1})  # its last renewal has run out
    assert workers_loading(redis, keys) == 0


def test_ask_yields_the_waiting_state_and_closing_it_cancels_the_question(redis, queue_name):
    queue = JobQueue(redis, name=queue_name)
    with closing(ask(redis, queue, [("user", "What is the capital of France?")])) as replies:
        assert next(replies) == ("waiting", f"#1 in the queue; {NO_WORKER}")
        job_id = queue.rq.get_job_ids()[0]
    assert queue.depth() == 0
    assert queue.rq.fetch_job(job_id).get_status() == "canceled"


def test_a_question_removed_from_the_queue_ends_the_wait_with_an_error(redis, queue_name):
    queue = JobQueue(redis, name=queue_name)
    replies = ask(redis, queue, [("user", "What is the capital of France?")])
    assert next(replies)[0] == "waiting"
    queue.cancel(queue.rq.get_job_ids()[0])  # e.g. by an operator
    assert next(replies) == ("error", "the question was cancelled")


@pytest.mark.parametrize("text", ["", "   \n\t", "\u200b\u200d", "\x00\x01\x1b"])
def test_nothing_to_ask_is_refused(text):
    with pytest.raises(BadQuestion, match="ask me something"):
        checked_question(text)


def test_control_characters_are_dropped_and_a_too_long_question_is_refused():
    assert checked_question("  What is\x00 the capital\x1b of France?\n") == "What is the capital of France?"
    with pytest.raises(BadQuestion, match="too long: 100,001 characters; the limit is 100,000"):
        checked_question("x" * (MAX_TEXT_CHARS + 1))


def test_ask_with_nothing_to_ask_is_one_line_and_a_usage_error(capsys):
    assert main(["ask", "  "]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"xwinbot: {EMPTY_QUESTION}\n"
    assert captured.out == ""


def test_chat_goes_on_after_a_bad_line(capsys, monkeypatch):
    lines = iter(["\x01", "x" * (MAX_TEXT_CHARS + 1)])
    monkeypatch.setattr("builtins.input", lambda prompt: next(lines, ""))
    monkeypatch.setattr("worker.cli.print_answer", lambda settings, turns: pytest.fail("nothing to ask"))
    assert main(["chat"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"xwinbot: {EMPTY_QUESTION}",
        f"xwinbot: the question is too long: {MAX_TEXT_CHARS + 1:,} characters; the limit is {MAX_TEXT_CHARS:,}",
    ]


def test_the_reader_waits_out_a_redis_restart(tmp_path):
    from tests.helpers.redis_server import RedisServer

    keys, job_id = RedisKeys("restart-test"), "restart-test-console-1"
    with RedisServer(tmp_path / "redis") as server:
        reader = redis_client(server.url, retry_s=15)
        replies = read_reply(reader, keys, job_id, timeout_s=None, idle=lambda: "waiting")
        assert next(replies) == ("idle", "waiting")
        server.kill()
        threading.Timer(2, server.start).start()  # back after 2 s, without the stream: the answer comes later
        assert next(replies) == ("idle", "waiting")  # the read that met the outage was retried, not raised
        server.client().xadd(keys.reply_stream(job_id), {"kind": "final", "text": "Paris"})
        assert next(replies) == ("final", "Paris")
