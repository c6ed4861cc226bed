"""The job queue on a real Redis (127.0.0.1:6379): JSON payloads, duplicates, limits, positions, cancel.

Every test uses its own queue name and job ids carrying one random tag, and deletes every key with that tag.
"""

from __future__ import annotations

import json
import uuid
import zlib

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.serializers import JSONSerializer

import worker.queue.job_queue as queue_module
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import TASK, Busy, DuplicateJob, JobQueue, QueueLimits


@pytest.fixture
def redis():
    client = Redis(host="127.0.0.1", port=6379, db=0)
    try:
        client.ping()
    except RedisConnectionError:
        pytest.fail("no Redis server at 127.0.0.1:6379 (the tests need a real one; .ci/run starts it)")
    yield client
    client.close()


@pytest.fixture
def tag(redis):
    tag = uuid.uuid4().hex
    yield tag
    keys = list(redis.scan_iter(match=f"*{tag}*", count=1000))
    if keys:
        redis.delete(*keys)
    redis.srem("rq:queues", f"rq:queue:test-{tag}")
    redis.srem("rq:workers", f"rq:worker:w-{tag}")


@pytest.fixture
def make_queue(redis, tag):
    def make(**limits) -> JobQueue:
        return JobQueue(redis, QueueLimits(**limits), name=f"test-{tag}")

    return make


@pytest.fixture
def make_job(tag):
    counter = iter(range(1, 10_000))

    def make(user: str = "U1", platform: str = "slack") -> Job:
        return Job(
            job_id=f"{tag}-{next(counter)}",
            turns=[JobTurn(role="user", text="What is the capital of France? ✓")],
            requester=Requester(platform=platform, user_id=user),
            reply_to=ReplyTarget(platform=platform, channel_id="C1"),
        )

    return make


def start(queue: JobQueue) -> RQJob:
    """Do what a worker does when it takes the next job: pop it and mark it started."""
    rq_job, _ = Queue.dequeue_any([queue.rq], None, connection=queue.redis, serializer=JSONSerializer)
    with queue.redis.pipeline() as pipe:
        rq_job.prepare_for_execution("test-worker", pipe)
        pipe.execute()
    return rq_job


def test_enqueue_stores_json_args(redis, make_queue, make_job):
    queue, job = make_queue(), make_job()
    enqueued = queue.enqueue(job)
    assert (enqueued.job_id, enqueued.position) == (job.job_id, 1)
    raw = redis.hgetall(f"rq:job:{job.job_id}")
    payload = zlib.decompress(raw[b"data"])  # RQ zlib-compresses the serialized call
    assert not payload.startswith(b"\x80")  # not a pickle
    func, instance, args, kwargs = json.loads(payload.decode("utf-8"))
    assert (func, instance, kwargs) == (TASK, None, {})
    assert Job.from_json(args[0]) == job
    assert json.loads(raw[b"meta"]) == {"requester": "slack:U1"}
    assert b"What is the capital" not in raw[b"description"]
    assert int(raw[b"timeout"]) == 600
    rq_job = RQJob.fetch(job.job_id, connection=redis, serializer=JSONSerializer)
    assert rq_job.get_status() == JobStatus.QUEUED and rq_job.retries_left == 3
    assert queue.depth() == 1


def test_duplicate_refused_while_queued_and_after_removal(redis, make_queue, make_job):
    queue, job = make_queue(), make_job()
    queue.enqueue(job)
    with pytest.raises(DuplicateJob) as info:
        queue.enqueue(job)
    assert info.value.job_id == job.job_id
    RQJob.fetch(job.job_id, connection=redis, serializer=JSONSerializer).delete()  # dequeued and long forgotten
    assert queue.depth() == 0
    with pytest.raises(DuplicateJob):
        queue.enqueue(job)
    assert queue.depth() == 0


def test_duplicate_refused_after_a_real_worker_finished_it(redis, make_queue, make_job, tag, monkeypatch):
    monkeypatch.setattr(queue_module, "TASK", "json.loads")  # a task that accepts the job JSON and finishes
    queue, job = make_queue(), make_job()
    queue.enqueue(job)
    SimpleWorker([queue.rq], connection=redis, serializer=JSONSerializer, name=f"w-{tag}").work(burst=True)
    rq_job = RQJob.fetch(job.job_id, connection=redis, serializer=JSONSerializer)
    assert rq_job.get_status() == JobStatus.FINISHED
    assert rq_job.return_value()["job_id"] == job.job_id
    with pytest.raises(DuplicateJob):
        queue.enqueue(job)
    assert queue.depth() == 0


def test_a_failed_job_is_requeued_by_a_worker_without_scheduler(redis, make_queue, make_job, tag, monkeypatch):
    monkeypatch.setattr(queue_module, "TASK", "int")  # int(job_json) raises: every attempt fails
    queue, job = make_queue(retries=2), make_job()
    queue.enqueue(job)
    SimpleWorker([queue.rq], connection=redis, serializer=JSONSerializer, name=f"w-{tag}").work(burst=True)
    rq_job = RQJob.fetch(job.job_id, connection=redis, serializer=JSONSerializer)
    assert rq_job.get_status() == JobStatus.FAILED and rq_job.retries_left == 0  # ran 3 times, none stuck
    assert queue.depth() == 0 and len(queue.rq.scheduled_job_registry) == 0


def test_per_user_cap(make_queue, make_job):
    queue = make_queue(per_user=3)
    jobs = [make_job("U1") for _ in range(3)]
    for job in jobs:
        queue.enqueue(job)
    with pytest.raises(Busy) as info:
        queue.enqueue(make_job("U1"))
    assert info.value.reason == "user"
    assert info.value.message == str(info.value)
    assert info.value.message.startswith("You already have 3 questions waiting")
    queue.enqueue(make_job("U2"))  # someone else is still welcome
    queue.enqueue(make_job("U1", platform="discord"))  # a different platform's U1 is someone else
    refused = make_job("U1")
    with pytest.raises(Busy):
        queue.enqueue(refused)
    queue.release(jobs[0])  # one answered: the slot frees
    queue.enqueue(refused)  # a refused id was not remembered as a duplicate
    assert queue.depth() == 6


def test_running_jobs_count_for_the_user(make_queue, make_job):
    queue = make_queue(per_user=1)
    first = make_job()
    queue.enqueue(first)
    start(queue)
    with pytest.raises(Busy, match="You already have a question waiting"):
        queue.enqueue(make_job())
    queue.release(first)
    queue.enqueue(make_job())


def test_global_cap(make_queue, make_job):
    queue = make_queue(total=2)
    queue.enqueue(make_job("U1"))
    queue.enqueue(make_job("U2"))
    with pytest.raises(Busy) as info:
        queue.enqueue(make_job("U3"))
    assert info.value.reason == "global"
    assert "a lot of questions" in info.value.message
    start(queue)  # a worker takes one: room again
    queue.enqueue(make_job("U3"))


def test_positions(make_queue, make_job):
    queue = make_queue()
    jobs = [make_job(f"U{i}") for i in range(3)]
    assert [queue.enqueue(job).position for job in jobs] == [1, 2, 3]
    assert [queue.position(job.job_id) for job in jobs] == [1, 2, 3]
    start(queue)
    assert [queue.position(job.job_id) for job in jobs] == [None, 1, 2]
    assert queue.cancel(jobs[1].job_id) == "removed"
    assert [queue.position(job.job_id) for job in jobs] == [None, None, 1]
    assert queue.position("no-such-job") is None


def test_cancel_queued_job(redis, make_queue, make_job):
    queue = make_queue(per_user=1)
    job = make_job()
    queue.enqueue(job)
    assert queue.cancel(job.job_id) == "removed"
    assert queue.position(job.job_id) is None and queue.depth() == 0
    assert RQJob.fetch(job.job_id, connection=redis, serializer=JSONSerializer).get_status() == JobStatus.CANCELED
    assert not queue.cancel_requested(job.job_id)
    queue.enqueue(make_job())  # the user's slot is free again
    assert queue.cancel(job.job_id) == "unknown"  # already cancelled
    with pytest.raises(DuplicateJob):
        queue.enqueue(job)


def test_cancel_started_job(redis, make_queue, make_job, tag):
    queue, job = make_queue(), make_job()
    queue.enqueue(job)
    assert not queue.cancel_requested(job.job_id)
    start(queue)
    assert queue.cancel(job.job_id) == "stopping"
    assert queue.cancel_requested(job.job_id)
    assert 0 < redis.ttl(f"test-{tag}:cancel:{job.job_id}") <= 3600


def test_cancel_unknown(make_queue):
    assert make_queue().cancel("no-such-job") == "unknown"


def test_stale_slot_of_a_job_that_ended_without_release(redis, make_queue, make_job, tag):
    queue = make_queue(per_user=1)
    job = make_job()
    queue.enqueue(job)
    RQJob.fetch(job.job_id, connection=redis, serializer=JSONSerializer).delete()  # e.g. expired after failing
    with pytest.raises(Busy):  # a fresh entry is never dropped (its RQ job may still be on its way)
        queue.enqueue(make_job())
    redis.zadd(f"test-{tag}:active:slack:U1", {job.job_id: 1.0})  # pretend it was accepted long ago
    queue.enqueue(make_job())
