"""The worker process: the model loaded once, one engine, many RQ job threads feeding it.

    xwinbot worker      # join the queue at XWINBOT_REDIS_URL; start as many as you have GPUs/machines
"""

from __future__ import annotations

import logging
import signal
import threading

from redis import Redis

from worker.posters.registry import posters_from_settings
from worker.queue import job_queue
from worker.queue_positions import PositionAnnouncer
from worker.rq_workers import ThreadedWorkers
from worker.settings import Settings
from worker.tasks import WorkerContext, set_context

log = logging.getLogger(__name__)


class WorkerProcess:
    def __init__(self, settings: Settings, redis: Redis | None = None, posters: dict | None = None):
        self.settings = settings
        self.posters = posters
        self.redis = redis or Redis.from_url(settings.redis_url)
        self.engine = None
        self.workers: ThreadedWorkers | None = None
        self.announcer: PositionAnnouncer | None = None

    def start(self) -> None:
        from worker.engine import Engine
        from worker.model_setup import load_generator

        self.engine = Engine(load_generator(self.settings), max_batch=self.settings.max_batch)
        self.engine.start()
        context = WorkerContext(
            engine=self.engine,
            queue=job_queue(self.settings, self.redis),
            redis=self.redis,
            posters=self.posters or posters_from_settings(self.settings, self.redis),
            defaults=self.settings.generation_params(),
            update_interval_s=self.settings.update_interval_s,
        )
        set_context(context)
        self.announcer = PositionAnnouncer(context.queue, self.redis, context.poster_for,
                                           interval_s=self.settings.position_interval_s)
        self.announcer.start()
        # One job thread per batch slot, plus a few so a finished answer's posting never idles a slot.
        self.workers = ThreadedWorkers(
            self.redis, self.settings.queue_name, concurrency=self.settings.max_batch + 2,
            heartbeat_s=self.settings.heartbeat_s, maintenance_interval_s=self.settings.maintenance_interval_s,
        )
        self.workers.start()
        log.info("worker ready: %d job threads on queue %r", self.settings.max_batch + 2, self.settings.queue_name)

    def stop(self) -> None:
        """Running answers finish; queued questions stay queued for the next worker."""
        if self.announcer:
            self.announcer.stop()
        if self.workers:
            self.workers.stop()
        if self.engine:
            self.engine.stop()
        set_context(None)


def run_until_stopped(process: WorkerProcess) -> None:
    """Serve until Ctrl-C or SIGTERM, then stop cleanly."""
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    process.start()
    print("xwinbot worker is ready (Ctrl-C stops it; answers in progress finish first)", flush=True)
    stopping.wait()
    print("xwinbot: stopping…", flush=True)
    process.stop()
