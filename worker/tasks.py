"""The function RQ runs for every question: ``answer_job(job_json)``.

It runs in one of the worker process's job threads (see ``worker.queue.rq_workers``): it submits the conversation
to the shared engine, streams the answer to the platform's poster (throttled), honours cancel requests, and
finishes only after the final reply is posted, then records the answer (with the model and prompt template
that wrote it) for people's 👍/👎 (``worker.feedback``). A bad job gets a clear reply when it names where to
reply, and never takes the worker down.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError
from rq import get_current_job

from worker.errors import BackendUnavailable, PromptTooLong
from worker.feedback.store import AnswerRecords
from worker.inference.sampling import GenerationParams
from worker.job_context import params_for, reply_footer, submit_fitting
from worker.logs import job_context
from worker.ops import metrics
from worker.posters.base import DeliveryFailed, Poster, StreamingReply, deliver
from worker.queue.job import Job, JobRejected, ReplyTarget
from worker.queue.job_queue import JobQueue
from worker.queue.positions import mark_started
from worker.settings import DEFAULT_DELIVERY_RETRY_S, DEFAULT_UPDATE_INTERVAL_S

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.25
DELIVERED_TTL_S = 24 * 3600


@dataclass
class WorkerContext:
    """What a job needs from the worker process; set once by ``worker.serve`` before the job threads start."""

    engine: object  # worker.inference.engine.Engine
    queue: JobQueue
    redis: Redis
    posters: dict[str, Callable[[], Poster]]
    defaults: GenerationParams = field(default_factory=GenerationParams)
    update_interval_s: float = DEFAULT_UPDATE_INTERVAL_S
    delivery_retry_s: float = DEFAULT_DELIVERY_RETRY_S
    model: str | None = None  # what wrote the answers (BackendInfo.model), kept with each one for feedback
    template: str | None = None  # the prompt template's name (BackendInfo.template; None: an external server)

    def deliver(self, call: Callable[[], None], what: str) -> None:
        """One poster call, retried while the platform is down for up to the delivery retry window."""
        deliver(call, what=what, window_s=self.delivery_retry_s)

    def poster_for(self, platform: str) -> Poster:
        if platform not in self.posters:
            raise DeliveryFailed(f"no reply poster is configured for {platform}")
        return self.posters[platform]()


_context: WorkerContext | None = None


def set_context(context: WorkerContext | None) -> None:
    global _context
    _context = context


def answer_job(job_json: str) -> dict:
    context = _context
    if context is None:
        raise RuntimeError("this process has no xwinbot engine: run jobs with `xwinbot worker` or `xwinbot up`")
    try:
        job = Job.from_json(job_json)
    except JobRejected as err:
        metrics.JOBS.labels("rejected").inc()
        if reply_to_rejected(context, job_json, str(err)):
            return {"status": "rejected", "reason": str(err)}
        raise  # nowhere to reply: RQ's failed registry keeps the reason
    with job_context(job.job_id), metrics.JOBS_RUNNING.track_inprogress():
        metrics.QUEUE_WAIT.observe(max(0.0, time.time() - job.created_at))
        try:
            result = answer(context, job)
        except Exception:
            metrics.JOBS.labels("error").inc()
            if not will_be_retried():
                context.queue.release(job)
            raise
        context.queue.release(job)
        metrics.JOBS.labels(result["status"]).inc()
        return result


def will_be_retried() -> bool:
    """Whether RQ runs the current job again after this failure (its Retry has attempts left)."""
    current = get_current_job()
    return bool(current and current.retries_left)


def answer(context: WorkerContext, job: Job) -> dict:
    keys = context.queue.keys
    delivered_key = keys.delivered(job.job_id)
    if context.redis.exists(delivered_key):
        return {"status": "already-delivered"}  # a retry after a crash between posting and finishing
    poster = context.poster_for(job.reply_to.platform)
    if not mark_started(context.redis, keys, job.job_id, DELIVERED_TTL_S):
        restart = getattr(poster, "restart", None)  # a crashed worker began this answer: start it over
        if restart:
            context.deliver(lambda: restart(job), what="restart notice")
    try:
        params = params_for(job, context.defaults)
        stream, notes = submit_fitting(lambda turns: context.engine.submit(turns, params, job.system_prompt), job)
    except (PromptTooLong, ValueError) as err:  # BackendRefused too: its message is the reply
        reason = str(err)
        context.deliver(lambda: poster.fail(job, reason), what="error reply")
        context.redis.set(delivered_key, 1, ex=DELIVERED_TTL_S)
        return {"status": "refused", "reason": reason}
    except BackendUnavailable as err:
        return unavailable(context, job, poster, err)
    # The prompt prefills while the platform takes the notice (an HTTP call, retried with back-off while the
    # platform rate-limits a burst), not after it.
    try:
        context.deliver(lambda: poster.waiting(job, None), what="thinking notice")
    except BaseException:
        stream.cancel()
        raise
    reply = StreamingReply(poster, job, context.update_interval_s, retry_window_s=context.delivery_retry_s)
    cancelled, last_poll = False, 0.0
    try:
        # Text in batches a few times a second (the reply edits once per interval anyway), not a wake-up per
        # token: with 32 answers streaming, per-token wake-ups keep the engine's thread waiting for the GIL.
        for piece in stream.batches(min(context.update_interval_s, CANCEL_POLL_S)):
            reply.add(piece)
            if time.monotonic() - last_poll >= CANCEL_POLL_S:
                last_poll = time.monotonic()
                if cancel_requested(context, job):
                    stream.cancel()
                    cancelled = True
    except BackendUnavailable as err:  # the external server failed mid-answer: RQ runs the job again
        return unavailable(context, job, poster, err)
    except Exception as err:  # the engine failed this one request: say so in the thread, once
        log.exception("job %s failed while generating", job.job_id)
        notice = f"Sorry, generating the answer failed ({type(err).__name__})."
        context.deliver(lambda: poster.fail(job, notice), what="error reply")
        context.redis.set(delivered_key, 1, ex=DELIVERED_TTL_S)
        return {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
    finally:
        metrics.observe_stream(stream)
    cancelled = cancelled or getattr(stream, "cancelled", False)
    reply.finish(reply_footer([*job.notes, *notes], cancelled))
    context.redis.set(delivered_key, 1, ex=DELIVERED_TTL_S)
    remember_answer(context, job, reply.text.strip())
    return {
        "status": "cancelled" if cancelled else "answered",
        "tokens": getattr(stream, "tokens", None),
        "prompt_tokens": getattr(stream, "prompt_tokens", None),
        "first_token_at": unix_time(getattr(stream, "first_token_at", None)),
    }


def remember_answer(context: WorkerContext, job: Job, text: str) -> None:
    """Keep the answer as the model wrote it (without our footer notes) for its 👍/👎. The answer is out already:
    failing to keep it only leaves a later rating without the answer's text, so it never fails the job."""
    try:
        AnswerRecords(context.redis, context.queue.keys).remember(job.job_id, text, context.model, context.template)
    except Exception as err:  # Redis gone past the retry window, or anything else: the user has their answer
        log.warning("could not record job %s's answer for feedback: %s", job.job_id, err)


def unavailable(context: WorkerContext, job: Job, poster: Poster, err: BackendUnavailable) -> dict:
    """The external backend did not answer: raise, so RQ runs the job again (its reply starts over), while the
    job's Retry has attempts left; on the last attempt tell the user, without a traceback."""
    if will_be_retried():
        log.warning("job %s: %s; the job will be retried", job.job_id, err)
        raise err
    log.warning("job %s: %s; no retries left", job.job_id, err)
    notice = f"Sorry, {err}. Please ask again in a little while."
    context.deliver(lambda: poster.fail(job, notice), what="error reply")
    context.redis.set(context.queue.keys.delivered(job.job_id), 1, ex=DELIVERED_TTL_S)
    return {"status": "failed", "reason": str(err)}


def cancel_requested(context: WorkerContext, job: Job) -> bool:
    """Whether the asker stopped this answer. Redis unreachable for longer than XWINBOT_REDIS_RETRY_S says
    nothing about that: the answer goes on (it would be wrong to fail it over a lost poll)."""
    try:
        return context.queue.cancel_requested(job.job_id)
    except RedisError as err:
        log.warning("could not poll job %s for a cancel request: %s", job.job_id, err)
        return False


def unix_time(monotonic_at: float | None) -> float | None:
    """A ``time.monotonic()`` reading as Unix time (for results people compare with other clocks)."""
    return None if monotonic_at is None else time.time() - (time.monotonic() - monotonic_at)


def reply_to_rejected(context: WorkerContext, job_json: str, reason: str) -> bool:
    """A job that fails validation often still names where to reply: tell the user there. True if told."""
    try:
        raw = json.loads(job_json)
        target = ReplyTarget.model_validate(raw["reply_to"])
        job_id = str(raw["job_id"])
    except Exception:  # nothing usable
        return False
    poster = context.poster_for(target.platform)
    stand_in = Job.model_construct(job_id=job_id, reply_to=target)
    notice = f"Sorry, I could not read that request: {reason}"
    context.deliver(lambda: poster.fail(stand_in, notice), what="error reply")
    return True
