"""Prometheus metrics of every xwinbot process (all named ``xwinbot_…``), served by ``worker.ops.health_server``.

Counters and histograms live in the process-wide default registry and are updated where things happen (jobs
in ``worker.tasks``, posting retries in ``worker.posters.base``, questions in the adapters). What Redis or
the engine knows is read at scrape time by the collectors below (the queue and the feedback counts on every
process's /metrics). This module never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# -- the worker: jobs and answers --------------------------------------------------------------------------
OUTCOMES = ("answered", "cancelled", "refused", "failed", "rejected", "already-delivered", "error")
JOBS = Counter("xwinbot_jobs", "Jobs finished by this worker, by outcome (error: raised; RQ retries or fails it)",
               ["outcome"])
for _outcome in OUTCOMES:
    JOBS.labels(_outcome)
JOBS_RUNNING = Gauge("xwinbot_jobs_running", "Jobs this worker is answering now")
QUEUE_WAIT = Histogram("xwinbot_queue_wait_seconds", "From a job's creation to a worker picking it up",
                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
TTFT = Histogram("xwinbot_time_to_first_token_seconds", "From submitting to the engine to the first answer token",
                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60))
TOKENS_PER_SECOND = Histogram("xwinbot_tokens_per_second", "Decode speed of one answer (tokens after the first "
                              "/ time since the first)", buckets=(1, 2, 5, 10, 15, 20, 30, 40, 60, 80, 120, 200))
POSTING_RETRIES = Counter("xwinbot_posting_retries", "Chat platform calls retried after a failure", ["what"])
POSTING_FAILURES = Counter("xwinbot_posting_failures", "Chat platform calls given up after every retry", ["what"])

# -- the adapters ----------------------------------------------------------------------------------------
QUESTIONS = Counter("xwinbot_questions_received", "Questions the chat adapter received", ["platform"])
ENQUEUED = Counter("xwinbot_jobs_enqueued", "Questions the chat adapter put on the queue", ["platform"])
BUSY = Counter("xwinbot_busy_refusals", "Questions refused because a queue limit was reached (user or global)",
               ["platform", "reason"])
NOT_ALLOWED = Counter("xwinbot_allowlist_refusals", "Questions refused by the allowlist", ["platform"])


def observe_stream(stream) -> None:
    """Time to first token and decode speed of one finished (or stopped) engine answer."""
    first, submitted = getattr(stream, "first_token_at", None), getattr(stream, "submitted_at", None)
    if first is None or submitted is None:
        return
    TTFT.observe(first - submitted)
    last, tokens = getattr(stream, "last_token_at", None), getattr(stream, "tokens", 0) or 0
    if last is not None and tokens > 1 and last > first:
        TOKENS_PER_SECOND.observe((tokens - 1) / (last - first))


def jobs_running() -> int:
    return int(REGISTRY.get_sample_value("xwinbot_jobs_running") or 0)


def _gauge(name: str, documentation: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


class QueueCollector:
    """Queue depth, workers alive and whether Redis answers, read from Redis at every scrape."""

    def __init__(self, queue):  # worker.queue.job_queue.JobQueue, on a client that fails fast
        self.queue = queue

    def collect(self):
        try:
            depth, workers = self.queue.depth(), self.queue.workers()
        except RedisError:
            yield _gauge("xwinbot_redis_up", "Whether Redis answered this scrape", 0)
            return
        yield _gauge("xwinbot_redis_up", "Whether Redis answered this scrape", 1)
        yield _gauge("xwinbot_queue_depth", "Questions waiting in the queue", depth, queue=self.queue.name)
        yield _gauge("xwinbot_workers_alive", "Workers registered on the queue", workers, queue=self.queue.name)


class FeedbackCollector:
    """``xwinbot_feedback_total{platform,rating}``: every 👍/👎 given, ever, as Redis counts them
    (``worker.feedback.store``), so any process's /metrics shows the same totals and a restart loses none."""

    def __init__(self, store):  # worker.feedback.store.FeedbackStore, on a client that fails fast
        self.store = store

    def collect(self):
        try:
            counts = self.store.counts()
        except RedisError as err:  # xwinbot_redis_up says Redis is away; the rest of /metrics still answers
            log.warning("no xwinbot_feedback_total this scrape: %s", err)
            return
        family = CounterMetricFamily("xwinbot_feedback", "Ratings of answers given (👍 good, 👎 bad), by platform",
                                     labels=["platform", "rating"])
        for (platform, rating), count in sorted(counts.items()):
            family.add_metric([platform, rating], count)
        yield family


class EngineCollector:
    """The engine's batch, waiting requests, tokens and GPU memory, read at every scrape (nothing before it runs)."""

    def __init__(self, engine_of: Callable[[], object], gpu_of: Callable[[], object] | None = None):
        self.engine_of = engine_of
        self.gpu_of = gpu_of or (lambda: None)  # the torch.device to report memory of (None: no GPU of ours)

    def collect(self):
        engine = self.engine_of()
        if engine is None:
            return
        stats = engine.stats
        yield _gauge("xwinbot_batch_size", "Conversations in the current decode batch", stats.decoding)
        yield _gauge("xwinbot_batch_size_max", "Most conversations decoded in one step so far", stats.max_batch_seen)
        yield _gauge("xwinbot_batch_slots", "Conversations the engine can batch (XWINBOT_MAX_BATCH)", engine.max_batch)
        yield _gauge("xwinbot_engine_waiting", "Requests waiting in the engine for a batch slot", stats.waiting)
        yield CounterMetricFamily("xwinbot_tokens_generated", "Tokens the engine generated", stats.tokens_generated)
        device = self.gpu_of()
        if device is not None and device.type == "cuda":
            import torch

            yield _gauge("xwinbot_gpu_memory_allocated_bytes", "GPU memory held by tensors now",
                         torch.cuda.memory_allocated(device), device=str(device))
            yield _gauge("xwinbot_gpu_memory_max_reserved_bytes", "Most GPU memory PyTorch's allocator reserved",
                         torch.cuda.max_memory_reserved(device), device=str(device))
