"""Several RQ workers in ONE process, as threads: no fork, the model is loaded once.

Why
---
rq's ``Worker`` forks a work horse per job (CUDA state does not survive ``fork``); ``SpawnWorker`` and
``WorkerPool`` start new interpreters (the model would be loaded again). ``SimpleWorker`` runs the job in
its own thread, one job at a time. :class:`ThreadedWorkers` therefore runs ``concurrency`` ``SimpleWorker``
subclasses (:class:`_ThreadWorker`), one per thread, all in the calling process: while one job waits for
its tokens from the shared generation engine, the other threads run their jobs. Several processes on the
same Redis and queue share the load with no extra setup (every thread is an ordinary rq worker that
dequeues with ``BLMOVE``; ``Queue.lmove`` moves the job to the queue's intermediate list atomically).

What is changed from ``SimpleWorker`` (rq 3.0)
---------------------------------------------
* ``death_penalty_class = rq.timeouts.TimerDeathPenalty``: job timeouts are raised in the job's thread with
  ``PyThreadState_SetAsyncExc``; ``UnixSignalDeathPenalty`` (``signal.alarm``) only works in the main thread.
* ``_install_signal_handlers``, ``subscribe``/``unsubscribe`` (one pubsub thread per worker, used only for
  ``rq`` shutdown/kill-horse commands) and ``procline`` (``setproctitle``) are no-ops: the process owner
  handles SIGINT/SIGTERM and calls :meth:`ThreadedWorkers.request_stop` / :meth:`ThreadedWorkers.stop`.
* ``dequeue_job_and_maintain_ttl`` polls ``Queue.dequeue_any`` with a short timeout (2 s) and returns
  ``None`` once stop is requested (rq's own loop retries ``DequeueTimeout`` forever), so an idle thread
  ends within ~2 s of :meth:`ThreadedWorkers.stop`. A stop never drops a job: a job is either still in the
  queue, or already dequeued, in which case that thread runs it to the end before it exits.
* Maintenance (registry cleanup) is not run by each worker thread's loop (``should_run_maintenance_tasks``
  is ``False``) but by ONE maintenance thread per process, every ``maintenance_interval_s`` (rq default:
  600 s), see below. It beats for this process's own running jobs first, and skips its pass while Redis has
  been up for less than one heartbeat TTL: a Redis restarted from its append-only file holds every running
  job's heartbeat as it was before the outage, and the workers need one beat to renew them.
* ``get_heartbeat_ttl`` returns ``3 * heartbeat_s`` and a heartbeat thread refreshes every running job's
  execution every ``heartbeat_s`` with rq's ``BaseWorker.maintain_heartbeats`` (``SimpleWorker`` itself
  never heartbeats while a job runs: its TTL is ``job.timeout + 60`` s, i.e. an abandoned job would be
  noticed only after its whole timeout plus a minute).
* A worker thread whose loop ends without a stop request (e.g. Redis connection lost: rq's ``work()``
  quits on ``redis.exceptions.TimeoutError`` and on unexpected exceptions) is restarted with a new name
  after a back-off.

Abandoned jobs (the process was killed with ``kill -9``) -- rq 3.0's mechanism, verified in its source
-------------------------------------------------------------------------------------------------------
1. ``BaseWorker.prepare_execution`` -> ``rq.executions.prepare_execution`` -> ``Execution.create`` adds
   ``"<job_id>:<execution_id>"`` to the queue's ``StartedJobRegistry`` (sorted set ``rq:wip:<queue>``) with
   score ``now + worker.get_heartbeat_ttl(job)`` (``StartedJobRegistry.add_execution``).
2. While the job runs, ``BaseWorker.maintain_heartbeats`` -> ``Execution.heartbeat`` pushes the score to
   ``now + ttl`` again (``add_execution(..., xx=True)``). Here: the heartbeat thread, every ``heartbeat_s``,
   ttl ``3 * heartbeat_s``. A dead process stops heartbeating, so its entries expire after at most
   ``3 * heartbeat_s``.
3. ``StartedJobRegistry.cleanup()`` (called by ``rq.registry.clean_registries(queue)``, which rq's workers
   run from ``BaseWorker.clean_registries`` every ``maintenance_interval``) takes every entry whose score is
   in the past and whose job status is still ``STARTED``: if ``job.retries_left > 0`` it calls
   ``Job.retry(queue, pipeline)`` (retries_left - 1, then ``Queue._enqueue_job``, or ``schedule_job`` when
   the ``Retry`` has an interval), otherwise ``record_job_failure`` moves it to the ``FailedJobRegistry``
   with ``AbandonedJobError``. So rq 3 requeues abandoned jobs itself -- **only when they were enqueued
   with ``retry=Retry(max=N)``**, and each abandonment uses one retry. Without ``Retry`` an abandoned job
   fails.
4. The maintenance thread here runs, every ``maintenance_interval_s``, under rq's per-queue maintenance
   lock (``Queue.registry_cleaning_key``, the key rq's own workers use; taken here with a short expiry
   instead of ``Queue.acquire_maintenance_lock``'s 899 s so a process killed while cleaning does not block
   cleanup for 15 min): ``StartedJobRegistry(..., death_penalty_class=TimerDeathPenalty).cleanup()``
   (failure callbacks under a thread-safe timeout), ``clean_registries(queue)``,
   ``worker_registration.clean_worker_registry(queue)`` and ``queue.intermediate_queue.cleanup(worker,
   queue)`` (a job moved by ``BLMOVE`` to the intermediate list but never registered as started -- the
   process died in between -- is failed/retried through ``handle_job_failure`` after ~1 min).

Re-pickup time after ``kill -9`` <= ``3 * heartbeat_s`` (entry expiry) + ``maintenance_interval_s``
(next cleanup on a surviving process) + dequeue latency: <= ~25 s with the defaults (5 s, 10 s). A job
whose heartbeat is late by more than ``2 * heartbeat_s`` (process frozen) is treated as abandoned and may
run twice: delivery is at-least-once, exactly-once in the kill-mid-job case (a job killed after its
function returned but before rq recorded the result runs again).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from uuid import uuid4

import redis.exceptions
from redis import Redis
from redis.backoff import EqualJitterBackoff
from rq import Queue, worker_registration
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry, clean_registries
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from worker.queue.redis_connection import as_text

# Jittered (between half and all of 1 s, 2 s, 4 s, …), so the job threads of every worker that lost Redis together
# do not all knock at the moment it is back.
RESTART_BACKOFF = EqualJitterBackoff(cap=30.0, base=0.5)  # a job thread whose loop ended

log = logging.getLogger(__name__)

DEQUEUE_POLL_S = 2
"""Blocking-dequeue timeout of each worker thread: an idle thread notices a stop request within this time. Well
under the client's socket timeout (``SOCKET_TIMEOUT_S``; RQ also raises a client's timeout above its own
dequeue timeout), so an idle dequeue never ends in a TimeoutError."""


class _ThreadWorker(SimpleWorker):
    """A ``SimpleWorker`` that is safe to run in a non-main thread, next to others in the same process."""

    death_penalty_class = TimerDeathPenalty

    def __init__(
        self,
        *args,
        stop_event: threading.Event,
        heartbeat_ttl: int,
        dequeue_poll_s: int = DEQUEUE_POLL_S,
        **kwargs,
    ):
        # Set before BaseWorker.__init__: it reads dequeue_timeout (via _set_connection) and sets
        # self._stop_requested.
        self._stop_event = stop_event
        self._own_stop_requested = False
        self._heartbeat_ttl = int(heartbeat_ttl)
        self._dequeue_poll_s = int(dequeue_poll_s)
        self._hb_lock = threading.RLock()
        super().__init__(*args, **kwargs)

    # -- stop request shared by all threads of a ThreadedWorkers ------------------------------------------
    @property
    def _stop_requested(self) -> bool:  # type: ignore[override]
        return self._own_stop_requested or self._stop_event.is_set()

    @_stop_requested.setter
    def _stop_requested(self, value: bool) -> None:
        self._own_stop_requested = bool(value)

    # -- nothing process-wide from a thread ----------------------------------------------------------------
    def _install_signal_handlers(self):  # signal.signal() raises ValueError outside the main thread
        pass

    def subscribe(self):  # no pubsub thread per worker; the process owner handles shutdown
        pass

    def unsubscribe(self):
        pass

    def procline(self, message):  # setproctitle is process-wide; threads would overwrite each other
        pass

    # -- maintenance is done once per process by ThreadedWorkers ----------------------------------------
    @property
    def should_run_maintenance_tasks(self):  # type: ignore[override]
        return False

    @property
    def dequeue_timeout(self) -> int:  # type: ignore[override]
        return self._dequeue_poll_s

    # -- short heartbeats, refreshed by ThreadedWorkers' heartbeat thread --------------------------------
    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self._heartbeat_ttl

    def beat(self) -> None:
        """Refresh the heartbeat of the job this thread is running (called from the heartbeat thread)."""
        with self._hb_lock:
            for execution in list(self.executions.values()):
                job = execution._job
                if job is not None:
                    self.maintain_heartbeats(job, execution)

    def cleanup_execution(self, job, pipeline, execution: Execution | None = None):
        # Under the heartbeat lock: once the execution is out of self.executions, beat() cannot recreate
        # its keys (Execution.heartbeat does HSET on the execution hash) after the pipeline deletes them.
        with self._hb_lock:
            super().cleanup_execution(job, pipeline, execution)

    # -- dequeue that gives up when a stop is requested --------------------------------------------------
    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        self.set_state(WorkerStatus.IDLE)
        failures = 0
        reconnect = EqualJitterBackoff(cap=self.max_connection_wait_time, base=0.5)
        while not self._stop_requested:
            try:
                self.heartbeat()
                result = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    self._dequeue_poll_s,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                failures = 0
                continue
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                failures += 1
                wait = reconnect.compute(failures)
                self.log.error('Worker %s: Redis unreachable (%s), retrying in %.1f s', self.name, exc, wait)
                self._stop_event.wait(wait)
                continue
            failures = 0
            if result is None:
                continue
            job, queue = result
            self.reorder_queues(reference_queue=queue)
            job.redis_server_version = self.get_redis_server_version()
            self.log.info('Worker %s: %s: %s', self.name, queue.name, job.id)
            # No heartbeat here (rq's loop has one): the job's own start pipeline beats for the worker a moment
            # later, and each round trip before the job starts waits for the GIL in a busy worker.
            return result
        return None


def process_name() -> str:
    """A name for this worker process, unique on the queue; its job threads are named ``<it>.<slot>``."""
    return f'{socket.gethostname()}.{os.getpid()}.{uuid4().hex[:6]}'


class ThreadedWorkers:
    """``concurrency`` rq workers as threads of this process, consuming one queue.

    Jobs must be enqueued with ``serializer=JSONSerializer`` and, to survive a killed worker process,
    with ``retry=Retry(max=N)`` (see the module docstring).
    """

    def __init__(
        self,
        redis: Redis,
        queue_name: str,
        concurrency: int = 8,
        *,
        name_prefix: str | None = None,
        maintenance_interval_s: int = 10,
        heartbeat_s: int = 5,
    ):
        if concurrency < 1:
            raise ValueError('concurrency must be >= 1')
        if heartbeat_s < 1 or maintenance_interval_s < 1:
            raise ValueError('heartbeat_s and maintenance_interval_s must be >= 1')
        self.redis = redis
        self.queue_name = queue_name
        self.concurrency = int(concurrency)
        self.name_prefix = name_prefix or process_name()
        self.maintenance_interval_s = int(maintenance_interval_s)
        self.heartbeat_s = int(heartbeat_s)
        self.heartbeat_ttl = 3 * self.heartbeat_s
        self._stop_event = threading.Event()
        self._workers: list[_ThreadWorker | None] = [None] * self.concurrency
        self._threads: list[threading.Thread] = []
        self._service_threads: list[threading.Thread] = []
        self._started = False

    # -- public API ----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise RuntimeError('ThreadedWorkers.start() called twice')
        self._started = True
        for i in range(self.concurrency):
            t = threading.Thread(target=self._run_slot, args=(i,), name=f'rq-worker-{i}', daemon=True)
            self._threads.append(t)
        hb = threading.Thread(target=self._heartbeat_loop, name='rq-heartbeat', daemon=True)
        mt = threading.Thread(target=self._maintenance_loop, name='rq-maintenance', daemon=True)
        self._service_threads = [hb, mt]
        for t in self._threads + self._service_threads:
            t.start()

    def request_stop(self) -> None:
        """Ask every thread to stop after its current job; returns at once (safe in a signal handler)."""
        self._stop_event.set()

    def wait_for_stop_request(self, poll_s: float = 0.5) -> None:
        """Block until ``request_stop`` is called (e.g. by a signal handler: the short waits let it run)."""
        while not self._stop_event.wait(poll_s):
            pass

    def stop(self, timeout: float = 30) -> None:
        """Graceful stop: no new job is taken, running jobs finish (up to ``timeout`` s), threads end.

        Queued jobs stay queued. A job still running when ``timeout`` expires keeps heartbeating while this
        process lives; if the process then exits, the job is requeued by a surviving worker's maintenance
        (``StartedJobRegistry.cleanup``), like after a crash.
        """
        self.request_stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.alive():
            log.warning('%d worker thread(s) still running a job after %.0f s', self.alive(), timeout)
            return
        for t in self._service_threads:
            t.join(max(0.1, deadline - time.monotonic()))

    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    @property
    def worker_names(self) -> list[str]:
        return [w.name for w in self._workers if w is not None]

    # -- threads -------------------------------------------------------------------------------------------
    def _make_worker(self, name: str) -> _ThreadWorker:
        return _ThreadWorker(
            [self.queue_name],
            name=name,
            connection=self.redis,
            serializer=JSONSerializer,
            job_monitoring_interval=self.heartbeat_s,
            worker_ttl=max(60, self.heartbeat_ttl),
            maintenance_interval=self.maintenance_interval_s,
            stop_event=self._stop_event,
            heartbeat_ttl=self.heartbeat_ttl,
        )

    def _run_slot(self, i: int) -> None:
        generation = 0
        while not self._stop_event.is_set():
            name = f'{self.name_prefix}.{i}' + (f'.r{generation}' if generation else '')
            try:
                worker = self._make_worker(name)
                self._workers[i] = worker
                worker.work(with_scheduler=False)
            except Exception:
                log.exception('rq worker thread %s crashed', name)
            if self._stop_event.is_set():
                break
            generation += 1
            backoff = RESTART_BACKOFF.compute(generation)
            log.warning('rq worker thread %s ended without a stop request; restarting in %.1f s', name, backoff)
            self._stop_event.wait(backoff)

    def _heartbeat_loop(self) -> None:
        # Runs until every worker thread has ended (a job still running after a stop keeps its heartbeat).
        while not (self._stop_event.is_set() and not self.alive()):
            self._beat_all()
            time.sleep(self.heartbeat_s if not self._stop_event.is_set() else min(self.heartbeat_s, 0.5))
            # (after a stop: re-check often so this thread ends soon after the last worker thread)

    def redis_restarted_within(self, seconds: float) -> bool:
        return int(self.redis.info('server')['uptime_in_seconds']) < seconds

    def _beat_all(self) -> None:
        """Refresh the heartbeat of every job this process is running (a failing worker does not stop the rest)."""
        for worker in list(self._workers):
            if worker is None:
                continue
            try:
                worker.beat()
            except Exception:
                log.exception('heartbeat of worker %s failed', worker.name)

    def _maintenance_loop(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.run_maintenance()
            except Exception:
                log.exception('rq maintenance failed')
            self._stop_event.wait(self.maintenance_interval_s)

    def run_maintenance(self) -> bool:
        """One cleanup pass of this queue's registries (see the module docstring). Returns whether it ran
        (not while another process holds the maintenance lock, nor in the first heartbeat TTL after Redis
        restarted)."""
        queue = Queue(
            self.queue_name,
            connection=self.redis,
            serializer=JSONSerializer,
            death_penalty_class=TimerDeathPenalty,
        )
        if self.redis_restarted_within(self.heartbeat_ttl):
            # Redis came back from its append-only file with every running job's last heartbeat as it was before
            # the outage: give the workers one heartbeat TTL to beat again before a job counts as abandoned
            # (else a job still being answered would be re-queued and answered twice).
            return False
        self._beat_all()  # our own running jobs are never abandoned, however long Redis was unreachable
        token = uuid4().hex
        lock_key = queue.registry_cleaning_key
        if not self.redis.set(lock_key, token, nx=True, ex=max(30, 2 * self.maintenance_interval_s)):
            return False
        try:
            StartedJobRegistry(queue=queue, death_penalty_class=TimerDeathPenalty).cleanup()
            clean_registries(queue)
            worker_registration.clean_worker_registry(queue)
            worker = next((w for w in self._workers if w is not None and w.birth_date is not None), None)
            if worker is not None:  # needed to fail/retry jobs stuck in the intermediate list
                queue.intermediate_queue.cleanup(worker, queue)
        finally:
            if as_text(self.redis.get(lock_key)) == token:
                self.redis.delete(lock_key)
        return True

