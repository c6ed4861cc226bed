"""Two deployments on ONE Redis (say production, with the default name, and staging) keep to themselves.

Each has a real worker process on the demo model and asks through the console client (``xwinbot ask``); both
answer, and afterwards every key in Redis belongs to exactly one of them: ours under its name, RQ's under its
queue, its jobs or its workers (RQ's two global indexes, ``rq:queues`` and ``rq:workers``, list members of
both). The same platform event id is accepted by both deployments, and only once by each. Marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from rq import Worker
from rq.job import Job as RQJob

from bot.console import read_reply
from tests.helpers.paths import REPO
from tests.helpers.processes import running, settings_env
from tests.helpers.redis_server import RedisServer
from worker.ops.status import read_status
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.job_queue import SERIALIZER, DuplicateJob, JobQueue
from worker.queue.keys import DEFAULT_NAMESPACE
from worker.queue.reply_index import ReplyIndex

pytestmark = pytest.mark.slow
SLACK_EVENT = "C0SHARED-1700000000.000100"  # one Slack workspace wired to both deployments sends them the same event
RQ_GLOBAL_INDEXES = {"rq:queues", "rq:workers"}


def settings_for(demo_dir, name: str, redis_url: str) -> dict:
    return dict(model=str(demo_dir), queue_name=name, redis_url=redis_url, device="cpu", temperature=0.0,
                max_new_tokens=24, max_context_tokens=512, max_batch=2, heartbeat_s=2, maintenance_interval_s=3,
                update_interval_s=0.3, metrics_port=0)


def shared_event_job(queue: JobQueue) -> Job:
    """The job a deployment makes of the shared Slack event (answered on the console, which needs no token)."""
    return Job(job_id=queue.keys.job_id("slack", SLACK_EVENT), turns=[JobTurn(role="user", text="Hello!")],
               requester=Requester(platform="slack", user_id="U1"),
               reply_to=ReplyTarget(platform="console", channel_id="terminal"))


def final_reply(redis, queue: JobQueue, job_id: str) -> str:
    kind, text = list(read_reply(redis, queue.keys, job_id, timeout_s=120))[-1]
    assert kind == "final", (kind, text)
    return text


def owner_of(key: str, redis, queues: dict[str, JobQueue]) -> str | None:
    """The deployment a key belongs to, or None when no single one can claim it."""
    owners = {name for name in queues if key.startswith(f"{name}:")}  # ours
    parts = key.split(":")
    if parts[0] == "rq":
        owners |= {name for name in queues if name in parts[2:]}  # per queue: rq:<registry>:<queue name>[:…]
        if parts[1] in ("job", "results", "executions", "execution"):  # per job: rq:<kind>:<job id>[:…]
            origin = redis.hget(f"rq:job:{parts[2]}", "origin")
            owners |= {origin.decode()} if origin else set()
        if parts[1] == "worker":  # per worker: rq:worker:<name>[:executions]
            worker_key = f"rq:worker:{parts[2]}"
            owners |= {name for name in queues if redis.sismember(f"rq:workers:{name}", worker_key)}
    return owners.pop() if len(owners) == 1 else None


def test_two_deployments_on_one_redis_never_meet(demo_dir, tmp_path):
    names = (DEFAULT_NAMESPACE, f"staging-{uuid.uuid4().hex[:6]}")
    questions = {names[0]: ("What is the capital of France?", "Paris"),
                 names[1]: ("What is the capital of Japan?", "Tokyo")}
    with RedisServer(tmp_path / "redis") as server:
        redis = server.client()
        queues = {name: JobQueue(redis, name=name) for name in names}
        envs = {name: settings_env(**settings_for(demo_dir, name, server.url)) for name in names}
        logs = {name: open(tmp_path / f"worker-{name}.log", "w") for name in names}
        with running(["worker"], envs[names[0]], stdout=logs[names[0]], stderr=subprocess.STDOUT), \
                running(["worker"], envs[names[1]], stdout=logs[names[1]], stderr=subprocess.STDOUT):
            # The same Slack event reaches both: each accepts it (its own id, its own dedupe mark), once.
            shared = {name: shared_event_job(queue) for name, queue in queues.items()}
            assert shared[names[0]].job_id != shared[names[1]].job_id
            assert not shared[names[0]].job_id.startswith(names[1])  # the default deployment's ids are unchanged
            assert shared[names[1]].job_id.startswith(f"{names[1]}-")
            for name, queue in queues.items():
                queue.enqueue(shared[name])
                with pytest.raises(DuplicateJob):
                    queue.enqueue(shared[name])  # a redelivery within one deployment is still a duplicate
                assert ReplyIndex(redis, queue.keys).claim("slack-event", "Ev-shared")  # first time here
                assert not ReplyIndex(redis, queue.keys).claim("slack-event", "Ev-shared")

            # Each deployment's console client asks its own question, through its own worker.
            asks = {name: subprocess.Popen([sys.executable, "-m", "worker.cli", "ask", questions[name][0]], cwd=REPO,
                                           env={**os.environ, **envs[name]}, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
                    for name in names}
            for name, process in asks.items():
                out, err = process.communicate(timeout=180)
                assert process.returncode == 0, (name, err, (tmp_path / f"worker-{name}.log").read_text()[-3000:])
                assert questions[name][1] in out, (name, out)
            for name, queue in queues.items():
                assert final_reply(redis, queue, shared[name].job_id)

            # Both index the answer to the same Slack message: each finds its own job.
            channel, ts = SLACK_EVENT.split("-")
            for name, queue in queues.items():
                ReplyIndex(redis, queue.keys).remember_question(shared[name])
                ReplyIndex(redis, queue.keys).link_message("slack", channel, ts, shared[name].job_id)
            for name, queue in queues.items():
                index = ReplyIndex(redis, queue.keys)
                assert index.job_id_for_message("slack", channel, ts) == shared[name].job_id
                assert index.job(shared[name].job_id) == shared[name]

            # Neither sees the other: its workers, its jobs, its dedupe marks, positions and streams.
            first, second = (queues[name] for name in names)
            threads = settings_for(demo_dir, "", server.url)["max_batch"] + 2  # RQ workers of one worker process
            for queue, other in ((first, second), (second, first)):
                assert queue.workers() == threads and Worker.count(queue=queue.rq) == threads
                assert len(read_status(queue).processes) == 1
                assert ReplyIndex(redis, queue.keys).job(shared[other.name].job_id) is None
                assert not redis.exists(queue.keys.reply_stream(shared[other.name].job_id))
                assert not redis.exists(queue.keys.dedupe(shared[other.name].job_id))
                assert queue.position(shared[other.name].job_id) is None
                assert RQJob.fetch(shared[queue.name].job_id, connection=redis,
                                   serializer=SERIALIZER).origin == queue.name

            # Every key of the shared Redis belongs to exactly one deployment (RQ's global indexes aside).
            keys = sorted(key.decode() for key in redis.scan_iter(count=1000))
            owners = {key: owner_of(key, redis, queues) for key in keys if key not in RQ_GLOBAL_INDEXES}
            assert [key for key, owner in owners.items() if owner is None] == []
            for name in names:
                mine = [key for key, owner in owners.items() if owner == name]
                assert any(key.startswith(f"{name}:dedupe:") for key in mine), mine
                assert any(key.startswith(f"{name}:reply:") for key in mine), mine
                assert any(key.startswith(f"{name}:worker-info") for key in mine), mine
                assert f"rq:queue:{name}" in keys or f"rq:finished:{name}" in keys, mine
            for index in RQ_GLOBAL_INDEXES & set(keys):
                members = sorted(member.decode() for member in redis.smembers(index))
                assert all(owner_of(member, redis, queues) for member in members), (index, members)
            print(f"\n{len(keys)} keys, by deployment: "
                  f"{ {name: sum(owner == name for owner in owners.values()) for name in names} }")
        for log in logs.values():
            log.close()
