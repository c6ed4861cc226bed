"""How long a burst of questions waits between the queue and the start of its answer, on the CPU.

32 jobs are enqueued at once from another process (as the chat adapters do) into the worker's RQ job threads
(``worker.queue.rq_workers.ThreadedWorkers``, as many as ``xwinbot worker`` runs for 32 users) while one more
thread of the process runs Python without pause, as the engine's thread does between CUDA calls, with the worker's
GIL switch interval. Each job does what ``worker.tasks.answer`` does before the engine sees the question (the
delivered check and ``mark_started``) and records when it got there. Every Redis call on that path gives up the
GIL and waits to take it back: the figure is the enqueue → start time, median and slowest, over rounds.

    python -m benchmarks.speed.pickup_latency [--rounds 5] [--tree DIR]   # DIR: another checkout's worker code

Needs the Redis at 127.0.0.1:6379 (uses database 5 and empties it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import uuid

JOBS = 32
DB = 5
QUEUE = "pickup-latency"
STARTS = "pickup-latency:starts"
ENQUEUE = f"""
import sys, time
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
queue = Queue({QUEUE!r}, connection=Redis(db={DB}), serializer=JSONSerializer)
for _ in range({JOBS}):
    queue.enqueue("benchmarks.speed.pickup_latency.answer_starts", time.time())
"""


def answer_starts(enqueued_at: float) -> None:
    """The job: ``worker.tasks.answer``'s Redis calls before it submits the prompt, then the time it got there."""
    from redis import Redis

    from worker.queue.keys import RedisKeys
    from worker.queue.positions import mark_started

    redis, keys, job_id = Redis(db=DB), RedisKeys(namespace="pickup-latency"), uuid.uuid4().hex
    redis.exists(keys.delivered(job_id))
    mark_started(redis, keys, job_id, 60)
    redis.rpush(STARTS, time.time() - enqueued_at)


def busy(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(2000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", help="import worker.* from this checkout (the tree before a change)")
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, args.tree)
    import logging

    from redis import Redis

    from worker.queue.rq_workers import ThreadedWorkers
    from worker.serve import GIL_SWITCH_INTERVAL_S, SPARE_JOB_THREADS

    threads = JOBS + SPARE_JOB_THREADS  # as many as a worker serving JOBS users at once runs

    logging.disable(logging.INFO)  # RQ's per-job lines: not the worker's (it logs them), but not measured here
    redis = Redis(db=DB)
    redis.flushdb()
    workers = ThreadedWorkers(redis, QUEUE, concurrency=threads)
    workers.start()
    time.sleep(3)  # every thread waiting in its dequeue
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    stop = threading.Event()
    threading.Thread(target=busy, args=(stop,), daemon=True).start()
    medians, slowest = [], []
    try:
        for _ in range(args.rounds):
            redis.delete(STARTS)
            subprocess.run([sys.executable, "-c", ENQUEUE], check=True)
            while redis.llen(STARTS) < JOBS:
                time.sleep(0.005)
            waits = sorted(float(w) * 1000 for w in redis.lrange(STARTS, 0, -1))
            medians.append(statistics.median(waits))
            slowest.append(waits[-1])
            time.sleep(0.5)
    finally:
        stop.set()
        workers.stop(5)
    print(f"tree {args.tree or '.'}: {JOBS} jobs, {threads} job threads beside a busy thread, {args.rounds} rounds")
    rounds = ", ".join(f"{m:.0f}" for m in medians)
    print(f"enqueue -> answer start ms: median {statistics.median(medians):.1f} (rounds {rounds}),"
          f" slowest {statistics.median(slowest):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
