"""The worker process: the model loaded once, one engine, many RQ job threads feeding it (or, with
XWINBOT_BACKEND=openai, no model: the job threads stream from an external OpenAI-compatible server).

    xwinbot worker      # join the queue at XWINBOT_REDIS_URL; start as many as you have GPUs/machines
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from redis import Redis

from worker.backends import BackendInfo, build_backend, describe
from worker.ops import metrics
from worker.ops.health_server import HealthServer, start_health_server
from worker.ops.status import forget_worker_info, loading_announced, publish_worker_info
from worker.posters.position_notices import PositionAnnouncer
from worker.posters.registry import posters_from_settings
from worker.queue.job_queue import job_queue
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import redis_from_settings
from worker.queue.rq_workers import ThreadedWorkers, process_name
from worker.settings import Settings
from worker.tasks import WorkerContext, set_context

log = logging.getLogger(__name__)


# Shorter waits for the GIL after the engine's CUDA calls: a gain at 32 users about the size of the runs' noise
# (benchmarks/NOTES.md row 41)
GIL_SWITCH_INTERVAL_S = 0.0005
# Job threads beyond one per batch slot: a thread whose answer just ended is still finishing RQ's bookkeeping
# when its user's next question arrives, and a spare one picks that question up meanwhile.
SPARE_JOB_THREADS = 2


class WorkerProcess:
    def __init__(self, settings: Settings, redis: Redis | None = None, posters: dict | None = None,
                 serve_health: bool = True):
        self.settings = settings
        self.posters = posters
        self.redis = redis or redis_from_settings(settings)
        self.name = process_name()  # known before the model loads: "loading" and then "ready" under one name
        self.serve_health = serve_health  # False: the process's owner serves /healthz (``xwinbot up``)
        self.engine = None  # the backend: our Engine, or worker.backends.openai_backend.OpenAIBackend
        self.info: BackendInfo | None = None
        self.workers: ThreadedWorkers | None = None
        self.announcer: PositionAnnouncer | None = None
        self.health_server: HealthServer | None = None

    def start(self) -> None:
        if self.serve_health:  # up while the model loads: /healthz says 503 (engine_running false) until ready
            self.health_server = start_health_server(self.settings, "worker", self.health, self.collectors())
        try:
            # Building or downloading the model can take minutes: waiting clients say so instead of "no worker
            # is running" (the claim ends once the job threads have registered with RQ and count as workers).
            with loading_announced(self.redis, RedisKeys.for_settings(self.settings), self.name):
                self._start()
        except BaseException:
            self._stop_health_server()
            raise

    def _start(self) -> None:
        self.engine = build_backend(self.settings)
        self.info = describe(self.engine, self.settings)
        if self.info.gpu is not None:
            # The engine's thread gives up the GIL at every CUDA call and waits to take it back while the job
            # threads run Python (RQ's bookkeeping, posting): at most this long, instead of CPython's 5 ms.
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.engine.start()
        context = WorkerContext(
            engine=self.engine,
            queue=job_queue(self.settings, self.redis),
            redis=self.redis,
            posters=self.posters or posters_from_settings(self.settings, self.redis),
            defaults=self.info.defaults,
            update_interval_s=self.settings.update_interval_s,
            delivery_retry_s=self.settings.delivery_retry_s,
            model=self.info.model,
            template=self.info.template,
        )
        set_context(context)
        self.announcer = PositionAnnouncer(context.queue, self.redis, context.poster_for,
                                           interval_s=self.settings.position_interval_s)
        self.announcer.start()
        # One job thread per batch slot, plus a few so a finished answer's posting never idles a slot. With an
        # external backend each job thread holds one streaming request: XWINBOT_MAX_BATCH answers at once.
        threads = self.settings.max_batch + SPARE_JOB_THREADS
        self.workers = ThreadedWorkers(
            self.redis, self.settings.queue_name, concurrency=threads, name_prefix=self.name,
            heartbeat_s=self.settings.heartbeat_s, maintenance_interval_s=self.settings.maintenance_interval_s,
        )
        self.workers.start()
        publish_worker_info(self.redis, context.queue.keys, self.name, model=self.info.model,
                            device=self.info.device, max_batch=self.settings.max_batch,
                            context_tokens=self.info.context_tokens, backend=self.info.name)
        log.info("worker ready: %d job threads on queue %r, backend %s (%s on %s)", threads,
                 self.settings.queue_name, self.info.name, self.info.model, self.info.device)

    def stop(self) -> None:
        """Running answers finish; queued questions stay queued for the next worker."""
        if self.announcer:
            self.announcer.stop()
        if self.workers:
            self.workers.stop()
            forget_worker_info(self.redis, RedisKeys.for_settings(self.settings), self.name)
        if self.engine:
            self.engine.stop()
        set_context(None)
        self._stop_health_server()

    def health(self) -> dict:
        """The worker's part of /healthz."""
        engine, info, settings = self.engine, self.info, self.settings
        configured = settings.backend_model if settings.backend == "openai" else settings.model
        return {
            "engine_running": bool(engine and engine.running),
            "backend": settings.backend,
            "model": info.model if info else configured,
            "device": info.device if info else None,
            "jobs_running": metrics.jobs_running(),
        }

    def collectors(self) -> list:
        """The worker's collectors for /metrics (the engine's batch, tokens and GPU memory)."""
        return [metrics.EngineCollector(lambda: self.engine, lambda: self.info.gpu if self.info else None)]

    def _stop_health_server(self) -> None:
        if self.health_server:
            self.health_server.stop()
            self.health_server = None


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
