"""worker/queue/rq_workers.py against a real Redis (127.0.0.1:6379, and private redis-servers for the AOF test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from uuid import uuid4

import pytest
from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from tests.helpers.paths import REPO
from tests.helpers.redis_server import RedisServer
from worker.queue.rq_workers import ThreadedWorkers

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def r():
    conn = Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    yield conn
    conn.close()


@pytest.fixture
def uniq(r):
    """A unique token for queue names, job ids and record keys; every key containing it is deleted after."""
    token = f"rqwt-{uuid4().hex[:10]}"
    yield token
    keys = list(r.scan_iter(match=f"*{token}*", count=1000))
    if keys:
        r.delete(*keys)


@pytest.fixture
def workers_to_stop():
    started: list[ThreadedWorkers] = []
    yield started
    for w in started:
        w.stop(timeout=10)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def enqueue(conn, qname, fn, arg, job_id, retry=3, timeout=60):
    q = Queue(qname, connection=conn, serializer=JSONSerializer)
    return q.enqueue(
        f"tests.helpers.rq_tasks.{fn}", arg, job_id=job_id, retry=Retry(max=retry) if retry else None,
        job_timeout=timeout,
    )


def records(conn, key):
    return [json.loads(x) for x in conn.lrange(key, 0, -1)]


def wait_for(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def spawn_worker_process(qname, concurrency, *, heartbeat, maintenance, prefix, url=REDIS_URL):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable, "-m", "tests.helpers.rq_worker_process", "--redis", url, "--queue", qname,
        "--concurrency", str(concurrency), "--heartbeat", str(heartbeat),
        "--maintenance-interval", str(maintenance), "--name-prefix", prefix, "--log-level", "WARNING",
    ]
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def test_concurrent_jobs_in_one_process(r, uniq, workers_to_stop):
    qname, key = f"q-{uniq}", f"rec-{uniq}"
    ids = [f"{uniq}-j{i}" for i in range(8)]
    for jid in ids:
        enqueue(r, qname, "slow_echo", {"key": key, "sleep": 1, "value": jid}, jid)

    tw = ThreadedWorkers(r, qname, concurrency=8, heartbeat_s=1, maintenance_interval_s=5)
    workers_to_stop.append(tw)
    t0 = time.monotonic()
    tw.start()
    wait_for(lambda: r.llen(key + ":done") == 8, 10, what="8 jobs done")
    elapsed = time.monotonic() - t0
    print(f"8 x 1 s jobs with concurrency 8: {elapsed:.2f} s")
    assert elapsed < 2.5, elapsed

    done = records(r, key + ":done")
    assert sorted(d["job"] for d in done) == sorted(ids)
    assert {d["pid"] for d in done} == {os.getpid()}  # no fork: everything ran in this process
    assert len({d["thread"] for d in done}) == 8
    wait_for(
        lambda: all(Job.fetch(j, connection=r, serializer=JSONSerializer).get_status() == JobStatus.FINISHED
                    for j in ids),
        5, what="FINISHED status",
    )
    assert Job.fetch(ids[0], connection=r, serializer=JSONSerializer).return_value() == ids[0]
    assert tw.alive() == 8
    tw.stop(timeout=10)
    assert tw.alive() == 0


def test_killed_worker_process_jobs_are_rerun_exactly_once(r, uniq, procs):
    qname, key = f"q-{uniq}", f"rec-{uniq}"
    ids = [f"{uniq}-j{i}" for i in range(6)]
    for jid in ids:
        enqueue(r, qname, "slow_echo", {"key": key, "sleep": 5, "value": jid}, jid, retry=3, timeout=60)

    heartbeat, maintenance = 2, 3
    a = spawn_worker_process(qname, 4, heartbeat=heartbeat, maintenance=maintenance, prefix=f"{uniq}-A")
    procs.append(a)
    wait_for(lambda: r.llen(key + ":started") == 4, 20, what="4 jobs started in worker A")
    time.sleep(1)
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    t_kill = time.monotonic()
    abandoned = {s["job"] for s in records(r, key + ":started")}
    assert len(abandoned) == 4 and not r.llen(key + ":done")

    b = spawn_worker_process(qname, 4, heartbeat=heartbeat, maintenance=maintenance, prefix=f"{uniq}-B")
    procs.append(b)
    wait_for(lambda: r.llen(key + ":done") >= 6, 60, interval=0.1, what="all 6 jobs done after kill -9")
    t_all_done = time.monotonic() - t_kill
    time.sleep(1)  # would catch a late duplicate execution

    done = [d["job"] for d in records(r, key + ":done")]
    assert sorted(done) == sorted(ids), done  # every job completed exactly once
    started = records(r, key + ":started")
    restarts = {}
    for s in started:
        if s["pid"] == b.pid and s["job"] in abandoned:
            restarts[s["job"]] = s["t"]
    assert set(restarts) == abandoned
    assert all(sum(1 for s in started if s["job"] == j) == 2 for j in abandoned)
    assert all(sum(1 for s in started if s["job"] == j) == 1 for j in set(ids) - abandoned)
    kill_wall = time.time() - (time.monotonic() - t_kill)
    repickup = max(restarts.values()) - kill_wall
    print(
        f"kill -9 -> abandoned jobs restarted after {min(restarts.values()) - kill_wall:.1f}..{repickup:.1f} s "
        f"(heartbeat {heartbeat} s, ttl {3 * heartbeat} s, maintenance {maintenance} s); "
        f"all done after {t_all_done:.1f} s"
    )
    assert repickup < 3 * heartbeat + maintenance + 3
    for jid in ids:
        job = Job.fetch(jid, connection=r, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FINISHED
    for jid in abandoned:
        assert Job.fetch(jid, connection=r, serializer=JSONSerializer).retries_left == 2
    assert StartedJobRegistry(qname, connection=r).get_job_count(cleanup=False) == 0
    assert len(FailedJobRegistry(qname, connection=r)) == 0

    # Ctrl-C on the process: graceful stop, exit code 0, fast when idle.
    t0 = time.monotonic()
    b.send_signal(signal.SIGINT)
    assert b.wait(15) == 0
    print(f"idle worker process stopped {time.monotonic() - t0:.1f} s after SIGINT")


def test_graceful_stop_keeps_queued_jobs(r, uniq, workers_to_stop):
    qname, key = f"q-{uniq}", f"rec-{uniq}"
    ids = [f"{uniq}-j{i}" for i in range(5)]
    for jid in ids:
        enqueue(r, qname, "slow_echo", {"key": key, "sleep": 1.5, "value": jid}, jid)
    q = Queue(qname, connection=r, serializer=JSONSerializer)

    tw = ThreadedWorkers(r, qname, concurrency=2, heartbeat_s=1, maintenance_interval_s=5)
    workers_to_stop.append(tw)
    tw.start()
    wait_for(lambda: r.llen(key + ":started") == 2, 10, what="2 jobs started")
    t0 = time.monotonic()
    tw.stop(timeout=20)
    print(f"stop() with 2 running jobs returned after {time.monotonic() - t0:.2f} s")
    assert tw.alive() == 0
    assert r.llen(key + ":done") == 2  # the running jobs finished
    assert r.llen(key + ":started") == 2  # and no new job was taken
    assert q.count == 3
    assert StartedJobRegistry(qname, connection=r).get_job_count(cleanup=False) == 0
    assert len(FailedJobRegistry(qname, connection=r)) == 0
    assert r.llen(q.intermediate_queue_key) == 0

    tw2 = ThreadedWorkers(r, qname, concurrency=3, heartbeat_s=1, maintenance_interval_s=5)
    workers_to_stop.append(tw2)
    tw2.start()
    wait_for(lambda: r.llen(key + ":done") == 5, 10, what="the rest done by the next workers")
    tw2.stop(timeout=10)
    assert sorted(d["job"] for d in records(r, key + ":done")) == sorted(ids)


def test_jobs_survive_redis_kill9_with_aof(tmp_path, procs):
    uniq = f"rqwt-{uuid4().hex[:10]}"
    qname, key = f"q-{uniq}", f"rec-{uniq}"
    ids = [f"{uniq}-j{i}" for i in range(4)]
    server = RedisServer(tmp_path / "redis")
    tw = None
    try:
        server.start()
        conn = server.client()
        for jid in ids:
            enqueue(conn, qname, "slow_echo", {"key": key, "sleep": 0.1, "value": jid}, jid)
        time.sleep(1.5)  # appendfsync everysec
        server.kill()
        server.start()
        conn = server.client()
        q = Queue(qname, connection=conn, serializer=JSONSerializer)
        assert q.job_ids == ids
        assert conn.config_get("appendonly")["appendonly"] == "yes"
        assert conn.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"

        tw = ThreadedWorkers(conn, qname, concurrency=2, heartbeat_s=1, maintenance_interval_s=5)
        tw.start()
        wait_for(lambda: conn.llen(key + ":done") == 4, 10, what="jobs done after Redis restart")
        assert sorted(d["job"] for d in records(conn, key + ":done")) == sorted(ids)
    finally:
        if tw is not None:
            tw.stop(timeout=10)
        server.stop()


def test_failing_job_lands_in_failed_registry_and_workers_keep_serving(r, uniq, workers_to_stop):
    qname, key = f"q-{uniq}", f"rec-{uniq}"
    bad = f"{uniq}-bad"
    enqueue(r, qname, "boom", {"key": key, "msg": "the model exploded"}, bad, retry=2)
    good = [f"{uniq}-ok{i}" for i in range(4)]
    for jid in good:
        enqueue(r, qname, "slow_echo", {"key": key, "sleep": 0.2, "value": jid}, jid)

    tw = ThreadedWorkers(r, qname, concurrency=2, heartbeat_s=1, maintenance_interval_s=5)
    workers_to_stop.append(tw)
    tw.start()
    failed = FailedJobRegistry(qname, connection=r, serializer=JSONSerializer)
    wait_for(lambda: bad in failed.get_job_ids(), 10, what="failed job in FailedJobRegistry")
    wait_for(lambda: r.llen(key + ":done") == 4, 10, what="good jobs done")

    assert r.llen(key + ":attempts") == 3  # first run + 2 retries
    job = Job.fetch(bad, connection=r, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    result = job.latest_result()
    assert "ValueError: boom: the model exploded" in result.exc_string
    assert tw.alive() == 2

    # still serving after the failure
    late = f"{uniq}-late"
    enqueue(r, qname, "slow_echo", {"key": key, "sleep": 0, "value": late}, late)
    wait_for(lambda: r.llen(key + ":done") == 5, 10, what="a job after the failure")
    tw.stop(timeout=10)
