"""The whole spine on the demo model: console client → job → Redis queue (RQ) → worker → poster → reply stream.

Real Redis, the real worker (engine + RQ job threads) on the real demo model. Marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from bot.console import ask, console_job, read_reply
from tests.helpers.paths import REPO
from tests.helpers.processes import settings_env, spawn
from worker.feedback.store import AnswerRecords
from worker.queue.job_queue import TASK, JobQueue, job_queue
from worker.queue.keys import RedisKeys
from worker.serve import SPARE_JOB_THREADS, WorkerProcess
from worker.settings import Settings

pytestmark = pytest.mark.slow
COUNTING = "Count from 1 to 300, one number per line."


def settings_for(demo_dir, queue_name, **extra) -> dict:
    return dict(model=str(demo_dir), queue_name=queue_name, device="cpu", temperature=0.0, max_new_tokens=40,
                max_context_tokens=1024, max_batch=4, heartbeat_s=2, maintenance_interval_s=3,
                update_interval_s=0.3, **extra)


@pytest.fixture
def worker(demo_dir, queue_name, redis):
    process = WorkerProcess(Settings(**settings_for(demo_dir, queue_name)), redis)
    process.start()
    yield process
    process.stop()


def as_user(job, user_id: str, max_new_tokens: int | None = None):
    """The same job asked by another person (and with another answer length)."""
    update = {"requester": job.requester.model_copy(update={"user_id": user_id})}
    if max_new_tokens:
        update["overrides"] = job.overrides.model_copy(update={"max_new_tokens": max_new_tokens})
    return job.model_copy(update=update)


def final_answer(redis, queue: JobQueue, question: str) -> str:
    text = ""
    for kind, piece in ask(redis, queue, [("user", question)], timeout_s=120):
        assert kind != "error", piece
        if kind == "restart":
            text = ""
        elif kind == "text":
            text += piece
    return text


def test_question_through_the_queue_is_answered(worker, redis):
    answer = final_answer(redis, job_queue(worker.settings, redis), "What is the capital of France?")
    assert "Paris" in answer


def test_overlapping_questions_are_batched_together(worker, redis):
    queue = job_queue(worker.settings, redis)
    questions = ["What is the capital of France?", "What is the capital of Japan?",
                 "What is the chemical symbol for gold?", "How many legs does a spider have?"]
    jobs = [as_user(console_job([("user", q)], queue.keys), f"user{i}") for i, q in enumerate(questions)]  # no cap
    for job in jobs:
        queue.enqueue(job)
    finals = {}
    for job in jobs:
        for kind, text in read_reply(redis, queue.keys, job.job_id, timeout_s=120):
            if kind in ("final", "error"):
                finals[job.job_id] = (kind, text)
    assert all(kind == "final" and text for kind, text in finals.values()), finals
    assert "Paris" in finals[jobs[0].job_id][1] and "Tokyo" in finals[jobs[1].job_id][1]
    assert worker.engine.stats.max_batch_seen >= 2  # they shared decode steps


def test_cancel_stops_a_running_answer(worker, redis):
    queue = job_queue(worker.settings, redis)
    job = as_user(console_job([("user", COUNTING)], queue.keys), "counter", max_new_tokens=400)
    queue.enqueue(job)
    entries = read_reply(redis, queue.keys, job.job_id, timeout_s=120)
    for kind, _text in entries:
        if kind == "update":
            break
    assert queue.cancel(job.job_id) == "stopping"
    final = [text for kind, text in entries if kind == "final"][0]
    assert final.endswith("(stopped)")
    assert final.count("\n") < 250  # it did not run on to the end
    kept = kept_answer(redis, queue.keys, job.job_id)  # what a 👍/👎 will carry: the text without our footer
    assert kept.answer and final.startswith(kept.answer) and "(stopped)" not in kept.answer


def kept_answer(redis, keys: RedisKeys, job_id: str):
    """The worker's record of a finished answer (written just after the final reply went out)."""
    deadline = time.monotonic() + 10
    while (record := AnswerRecords(redis, keys).get(job_id)) is None:
        assert time.monotonic() < deadline, f"no answer record for {job_id}"
        time.sleep(0.05)
    return record


def test_each_answer_is_kept_with_its_model_and_template_for_feedback(worker, redis, demo_dir):
    queue = job_queue(worker.settings, redis)
    job = console_job([("user", "What is the capital of France?")], queue.keys)
    queue.enqueue(job)
    final = [text for kind, text in read_reply(redis, queue.keys, job.job_id, timeout_s=120) if kind == "final"][0]
    kept = kept_answer(redis, queue.keys, job.job_id)
    assert "Paris" in kept.answer and kept.answer == final
    assert kept.model == str(demo_dir) and kept.template == "chat"  # the demo model's tokenizer has a chat template


def test_poisoned_jobs_get_clear_replies_and_the_worker_keeps_serving(worker, redis, queue_name):
    rq_queue = Queue(queue_name, connection=redis, serializer=JSONSerializer)
    keys = RedisKeys(queue_name)
    garbage = rq_queue.enqueue(TASK, "this is not json", job_id=f"garbage-{queue_name}")
    # Valid reply target, invalid conversation (ends with the assistant): the user hears why.
    bad = console_job([("user", "hi")], keys).model_dump(mode="json")
    bad["turns"] = [{"role": "assistant", "text": "hello"}]
    rq_queue.enqueue(TASK, json.dumps(bad), job_id=bad["job_id"])
    kind, text = list(read_reply(redis, keys, bad["job_id"], timeout_s=60))[-1]
    assert kind == "error" and "could not read that request" in text
    # A message far over the context: a clear refusal that names the limit.
    huge = console_job([("user", "word " * 5000)], keys)
    job_queue(worker.settings, redis).enqueue(huge)
    kind, text = list(read_reply(redis, keys, huge.job_id, timeout_s=60))[-1]
    assert kind == "error" and "limit is" in text and "tokens" in text
    deadline = time.monotonic() + 60
    while garbage.id not in FailedJobRegistry(queue=rq_queue).get_job_ids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert garbage.id in FailedJobRegistry(queue=rq_queue).get_job_ids()
    assert "not valid JSON" in (garbage.latest_result().exc_string or "")
    assert "Paris" in final_answer(redis, job_queue(worker.settings, redis), "What is the capital of France?")


def worker_env(demo_dir, queue_name, redis_url="redis://127.0.0.1:6379/0"):
    return settings_env(**settings_for(demo_dir, queue_name, redis_url=redis_url))


def test_killed_worker_mid_answer_another_answers_exactly_once(demo_dir, queue_name, redis):
    env = worker_env(demo_dir, queue_name)
    queue = JobQueue(redis, name=queue_name)
    first = spawn(["worker"], env)
    second = None
    try:
        jobs = [as_user(console_job([("user", COUNTING)], queue.keys), f"u{i}", max_new_tokens=150) for i in range(2)]
        for job in jobs:
            queue.enqueue(job)
        for kind, _ in read_reply(redis, queue.keys, jobs[0].job_id, timeout_s=120):
            if kind == "update":
                break  # mid-answer
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        second = spawn(["worker"], env)
        for job in jobs:
            kinds = [kind for kind, _ in read_reply(redis, queue.keys, job.job_id, timeout_s=180)]
            assert kinds.count("final") == 1
        entries = [redis.xrange(queue.keys.reply_stream(job.job_id)) for job in jobs]
        for stream in entries:  # exactly one final answer, nothing after it
            kinds = [fields[b"kind"] for _, fields in stream]
            assert kinds.count(b"final") == 1 and kinds[-1] == b"final"
            assert b"restart" in kinds  # the second worker started the interrupted answer over
        print(f"answered {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        for process in (first, second):
            if process and process.poll() is None:
                process.kill()
                process.wait()


def test_up_starts_redis_and_serves_ask(demo_dir, tmp_path):
    from tests.helpers.redis_server import free_port

    port = free_port()
    env = {**worker_env(demo_dir, "xwinbot", redis_url=f"redis://127.0.0.1:{port}/0"),
           "XWINBOT_DATA_DIR": str(tmp_path / "data")}
    env = {key: str(value) for key, value in env.items()}
    up = spawn(["up"], env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in up.stdout:
            if "ready" in line or time.monotonic() > deadline:
                break
        result = subprocess.run([sys.executable, "-m", "worker.cli", "ask", "What is the capital of France?"],
                                cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "Paris" in result.stdout
        assert (tmp_path / "data" / "redis").is_dir()  # its own Redis, with the append-only file there
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        with pytest.raises(RedisConnectionError):
            Redis(port=port, socket_connect_timeout=1).ping()  # the Redis it started is gone too
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


class UnreachablePlatform:
    """A chat platform that is down (the boundary): every call fails."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("platform is down")
        return fail


def failed_registry(redis, queue_name: str, job_id: str, timeout_s: float) -> FailedJobRegistry:
    """The queue's failed-job registry once it holds ``job_id`` (or after ``timeout_s``)."""
    registry = FailedJobRegistry(queue=Queue(queue_name, connection=redis, serializer=JSONSerializer))
    deadline = time.monotonic() + timeout_s
    while job_id not in registry.get_job_ids() and time.monotonic() < deadline:
        time.sleep(0.2)
    return registry


def test_an_undeliverable_answer_ends_in_the_failed_registry_with_the_reason(demo_dir, queue_name, redis):
    settings = Settings(**settings_for(demo_dir, queue_name, delivery_retry_s=5))  # down for longer than that
    process = WorkerProcess(settings, redis, posters={"console": UnreachablePlatform})
    process.start()
    try:
        queue = job_queue(settings, redis)
        job = console_job([("user", "What is the capital of France?")], queue.keys)
        queue.enqueue(job)
        registry = failed_registry(redis, queue_name, job.job_id, timeout_s=120)
        assert job.job_id in registry.get_job_ids()
        failed = registry.get_job_ids()
        from rq.job import Job as RQJob

        reason = RQJob.fetch(failed[0], connection=redis, serializer=JSONSerializer).latest_result().exc_string
        assert "could not deliver" in reason and "platform is down" in reason
        assert "Paris" in final_answer_with(process, redis)  # the worker still serves (once the platform is back)
    finally:
        process.stop()


def final_answer_with(process, redis) -> str:
    from worker.posters.console import ConsolePoster

    keys = RedisKeys.for_settings(process.settings)
    process.posters["console"] = lambda: ConsolePoster(redis, keys)  # the platform is back
    return final_answer(redis, job_queue(process.settings, redis), "What is the capital of France?")


def test_the_prompt_prefills_while_the_platform_takes_the_thinking_notice(demo_dir, queue_name, redis):
    """The "thinking…" notice is an HTTP call to the platform (slow, or retried while it rate-limits a burst): the
    answer is generated meanwhile, not after it."""
    from worker.posters.console import ConsolePoster

    keys = RedisKeys.for_settings(Settings(**settings_for(demo_dir, queue_name)))
    process = WorkerProcess(Settings(**settings_for(demo_dir, queue_name)), redis,
                            posters={"console": lambda: ConsolePoster(redis, keys)})
    process.start()
    try:
        generated_before = process.engine.stats.tokens_generated
        notice_saw_tokens = []

        class SlowPlatform(ConsolePoster):
            def waiting(self, job, position):  # returns once the answer has tokens, or after 20 s
                deadline = time.monotonic() + 20
                while process.engine.stats.tokens_generated == generated_before and time.monotonic() < deadline:
                    time.sleep(0.05)
                notice_saw_tokens.append(process.engine.stats.tokens_generated > generated_before)
                super().waiting(job, position)

        process.posters["console"] = lambda: SlowPlatform(redis, keys)
        answer = final_answer(redis, job_queue(process.settings, redis), "What is the capital of France?")
        assert notice_saw_tokens == [True]
        assert "Paris" in answer
    finally:
        process.stop()


def test_an_answer_whose_thinking_notice_cannot_be_shown_stops_generating(demo_dir, queue_name, redis):
    settings = Settings(**{**settings_for(demo_dir, queue_name, delivery_retry_s=1), "max_new_tokens": 400})
    process = WorkerProcess(settings, redis, posters={"console": UnreachablePlatform})
    process.start()
    try:
        queue = job_queue(settings, redis)
        job = console_job([("user", COUNTING)], queue.keys)
        queue.enqueue(job)
        assert job.job_id in failed_registry(redis, queue_name, job.job_id, timeout_s=60).get_job_ids()
        time.sleep(1)  # the engine's next step drops the cancelled answer
        generated = process.engine.stats.tokens_generated
        time.sleep(2)
        assert process.engine.stats.active == 0
        assert process.engine.stats.tokens_generated == generated  # nothing more is generated for nobody
    finally:
        process.stop()


def test_status_shows_the_running_worker_with_its_model_and_device(worker, redis, demo_dir):
    from worker.ops.status import read_status, render

    status = read_status(job_queue(worker.settings, redis))
    (entry,) = status.processes.values()
    assert entry["model"] == str(demo_dir) and entry["device"] == "cpu"
    assert entry["threads"] == worker.settings.max_batch + SPARE_JOB_THREADS
    assert f"{str(demo_dir)} on cpu" in render(status, worker.settings.redis_url)
