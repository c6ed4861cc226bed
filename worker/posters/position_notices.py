"""Keeps each queued question's placeholder showing its place in the queue ("thinking… #3 in queue").

One worker at a time (a short Redis lease) looks at the first queued jobs every few seconds and tells a job's
poster its new position when it changed, unless the answer has begun (``worker.queue.positions``). A notice that
lapses unless shown again (a Slack assistant thread's status line lasts two minutes) is told again, changed or
not, as often as its poster's ``status_refresh_s(job)`` says; other posters have no such method and are told only
of changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from redis import Redis
from rq.job import Job as RQJob

from worker.posters.base import Poster
from worker.queue.job import Job, JobRejected
from worker.queue.job_queue import SERIALIZER, JobQueue
from worker.queue.positions import show_unless_started
from worker.settings import DEFAULT_POSITION_INTERVAL_S

log = logging.getLogger(__name__)

ANNOUNCED_TTL_S = 3600


class PositionAnnouncer:
    def __init__(self, queue: JobQueue, redis: Redis, poster_for: Callable[[str], Poster],
                 interval_s: float = DEFAULT_POSITION_INTERVAL_S, max_jobs: int = 50):
        self.queue, self.redis, self.poster_for = queue, redis, poster_for
        self.interval_s, self.max_jobs = interval_s, max_jobs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xwinbot-positions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.announce_once()
            except Exception:  # Redis or a platform hiccup: the next round tries again
                log.warning("could not update queue positions", exc_info=True)

    def announce_once(self) -> int:
        """Tell every queued job whose position changed; returns how many were told."""
        lease_ms = max(100, int(self.interval_s * 900))
        if not self.redis.set(self.queue.keys.announcer(), 1, nx=True, px=lease_ms):
            return 0  # another worker does it this round
        job_ids = self.queue.rq.get_job_ids(0, self.max_jobs - 1)
        told = 0
        for position, rq_job in enumerate(RQJob.fetch_many(job_ids, self.redis, serializer=SERIALIZER), 1):
            if rq_job is not None and self._announce(rq_job, position):
                told += 1
        return told

    def _announce(self, rq_job: RQJob, position: int) -> bool:
        key = self.queue.keys.announced(rq_job.id)
        if self.redis.get(key) == str(position).encode():
            return False
        try:
            job = Job.from_json(rq_job.args[0])
        except (JobRejected, IndexError):
            return False  # the worker answers it with the reason when its turn comes
        try:
            poster = self.poster_for(job.reply_to.platform)
        except Exception:
            return False
        if not show_unless_started(self.redis, self.queue.keys, job.job_id, lambda: poster.waiting(job, position)):
            return False
        # Forgotten once the notice needs showing again, so that the next round tells the same position anew.
        self.redis.set(key, position, px=max(1, int(1000 * min(ANNOUNCED_TTL_S, self._refresh_s(poster, job)))))
        return True

    @staticmethod
    def _refresh_s(poster: Poster, job: Job) -> float:
        """How long ``job``'s notice stays shown without being told again."""
        refresh_s = getattr(poster, "status_refresh_s", None)
        return (refresh_s(job) if refresh_s else None) or ANNOUNCED_TTL_S
