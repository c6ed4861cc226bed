"""``ThreadedWorkers`` as a process of its own, for tests that kill it (``kill -9``) or stop it with Ctrl-C:

    python -m tests.helpers.rq_worker_process --queue NAME [--redis URL] [--concurrency N] ...

The first SIGINT/SIGTERM stops it after the running jobs (exit 0 once every thread ended); a second one quits
at once (exit 1; a surviving worker's maintenance requeues what was running).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from redis import Redis

from worker.queue.rq_workers import ThreadedWorkers

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run N rq workers as threads of one process (no fork).")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--queue", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--heartbeat", type=int, default=5, help="heartbeat period, s (job TTL = 3x)")
    parser.add_argument("--maintenance-interval", type=int, default=10, help="registry cleanup period, s")
    parser.add_argument("--name-prefix", default=None)
    parser.add_argument("--stop-timeout", type=float, default=30)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(threadName)s %(name)s %(message)s")
    logging.getLogger("rq.worker").setLevel(args.log_level.upper())  # rq sets it to INFO on import
    workers = ThreadedWorkers(Redis.from_url(args.redis), args.queue, args.concurrency, name_prefix=args.name_prefix,
                              maintenance_interval_s=args.maintenance_interval, heartbeat_s=args.heartbeat)
    signals = {"n": 0}

    def on_signal(signum, frame):
        signals["n"] += 1
        if signals["n"] > 1:
            log.warning("second signal: exiting without waiting for running jobs")
            os._exit(1)
        workers.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    workers.start()
    workers.wait_for_stop_request()
    workers.stop(args.stop_timeout)
    return 0 if workers.alive() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
