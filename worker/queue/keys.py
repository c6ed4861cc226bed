"""Every Redis key xwinbot writes, named once, under one namespace: the queue name (``XWINBOT_QUEUE_NAME``).

One setting names a deployment: its RQ queue (``rq:queue:<name>`` and RQ's per-queue registries) and the first
part of every key of ours, so two deployments sharing one Redis (staging and production) never read each
other's dedupe marks, positions, reply indexes or reply streams. With the default name, ``xwinbot``, every key
keeps the name it always had.

RQ's per-queue keys (``rq:queue:<name>``, ``rq:wip:<name>`` …, ``rq:workers:<name>``) follow the queue name;
its per-job keys (``rq:job:<id>``, ``rq:results:<id>``, ``rq:executions:<id>``) are global, so the job ids
this deployment makes carry its name too (``job_id``: ``staging-discord-ask-<interaction>``), except in the
default deployment, whose ids are unchanged (``discord-ask-<interaction>``, ``console-<uuid>`` …).

Built from the settings once (``RedisKeys.for_settings``; a ``JobQueue`` exposes the one of its queue as
``.keys``) and handed to everything that reads or writes a key. Not keys, and not namespaced: the custom ids of
the Discord buttons (``worker.posters.discord_controls``), which live on Discord's messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.queue.job import job_id_for
from worker.settings import DEFAULT_QUEUE_NAME as DEFAULT_NAMESPACE
from worker.settings import Settings


@dataclass(frozen=True)
class RedisKeys:
    """The keys of one deployment. Each template below is one kind of key; ``{ns}`` is the namespace."""

    namespace: str = DEFAULT_NAMESPACE

    # The queue (worker.queue.job_queue).
    DEDUPE = "{ns}:dedupe:{job_id}"  # (24 h) a job id once accepted: a redelivered event never runs twice
    ACTIVE = "{ns}:active:{requester}"  # sorted set: a person's queued and running job ids
    CANCEL = "{ns}:cancel:{job_id}"  # (1 h) a cancel request for a running job, polled by the worker
    # The worker (worker.tasks, worker.queue.positions, worker.posters.position_notices).
    DELIVERED = "{ns}:delivered:{job_id}"  # the final reply went out: a retry after a crash does nothing
    STARTED = "{ns}:started:{job_id}"  # the answer has begun: no queue-position notice after it
    PLACEHOLDER_LOCK = "{ns}:placeholder-lock:{job_id}"  # serialises position notices with the answer's start
    ANNOUNCER = "{ns}:announcer"  # the short lease of the worker that updates queue positions this round
    ANNOUNCED = "{ns}:announced:{job_id}"  # the position last shown for a queued job
    # Which job a platform message belongs to (worker.queue.reply_index); kept a week.
    INDEXED_JOB = "{ns}:job:{job_id}"
    MESSAGE = "{ns}:message:{platform}:{channel_id}:{message_id}"
    THREAD = "{ns}:thread:{platform}:{channel_id}:{thread_id}"
    SEEN = "{ns}:seen:{platform}:{source_id}"
    # Posters (worker.posters.*).
    REPLY_STREAM = "{ns}:reply:{job_id}"  # the console's reply stream, read by `xwinbot ask`
    REPLY_PARTS = "{ns}:{platform}:parts:{job_id}"  # the platform messages one long answer is spread over
    DISCORD_DM = "{ns}:discord:dm:{job_id}"  # the DM a private answer moved to when its interaction expired
    # The Slack adapter's inbox (bot.slack.inbox): events recorded before Slack is told they arrived.
    SLACK_INBOX = "{ns}:slack:inbox"  # hash: event id -> the event's body, when it came, failed tries
    SLACK_INBOX_DUE = "{ns}:slack:inbox-due"  # sorted set: event id -> when recovery may handle it (again)
    SLACK_INBOX_LEASE = "{ns}:slack:inbox-lease:{event_id}"  # (seconds) the adapter process handling it now
    # Feedback (worker.feedback): answers as they went out, and people's ratings of them.
    ANSWER = "{ns}:answer:{job_id}"  # (a week, as the reply index) the final answer, its model and template
    FEEDBACK = "{ns}:feedback:{rating_id}"  # hash: one person's rating of one answer (retention: a setting)
    FEEDBACK_TIMES = "{ns}:feedback-times"  # sorted set: rating id -> when it was last given (newest first)
    FEEDBACK_COUNTS = "{ns}:feedback-counts"  # hash: "platform:rating" -> ratings given (xwinbot_feedback_total)
    # Operating (worker.ops.status).
    WORKER_INFO = "{ns}:worker-info"  # hash: worker process -> what it serves
    WORKERS_LOADING = "{ns}:workers-loading"  # sorted set: worker process -> when its "loading the model" lapses

    @classmethod
    def for_settings(cls, settings: Settings) -> RedisKeys:
        return cls(settings.queue_name)

    @property
    def is_default(self) -> bool:
        return self.namespace == DEFAULT_NAMESPACE

    def job_id(self, platform: str, source_id: str) -> str:
        """This deployment's id for a job made from a platform's message/event id (see ``job_id_for``): the
        same event always gets the same id here, and a different one in a deployment of another name."""
        return job_id_for(platform, source_id, namespace=None if self.is_default else self.namespace)

    def dedupe(self, job_id: str) -> str:
        return self.DEDUPE.format(ns=self.namespace, job_id=job_id)

    def active(self, requester: str) -> str:
        return self.ACTIVE.format(ns=self.namespace, requester=requester)

    def cancel(self, job_id: str) -> str:
        return self.CANCEL.format(ns=self.namespace, job_id=job_id)

    def delivered(self, job_id: str) -> str:
        return self.DELIVERED.format(ns=self.namespace, job_id=job_id)

    def started(self, job_id: str) -> str:
        return self.STARTED.format(ns=self.namespace, job_id=job_id)

    def placeholder_lock(self, job_id: str) -> str:
        return self.PLACEHOLDER_LOCK.format(ns=self.namespace, job_id=job_id)

    def announcer(self) -> str:
        return self.ANNOUNCER.format(ns=self.namespace)

    def announced(self, job_id: str) -> str:
        return self.ANNOUNCED.format(ns=self.namespace, job_id=job_id)

    def indexed_job(self, job_id: str) -> str:
        return self.INDEXED_JOB.format(ns=self.namespace, job_id=job_id)

    def message(self, platform: str, channel_id: str, message_id: str) -> str:
        return self.MESSAGE.format(ns=self.namespace, platform=platform, channel_id=channel_id, message_id=message_id)

    def thread(self, platform: str, channel_id: str, thread_id: str) -> str:
        return self.THREAD.format(ns=self.namespace, platform=platform, channel_id=channel_id, thread_id=thread_id)

    def seen(self, platform: str, source_id: str) -> str:
        return self.SEEN.format(ns=self.namespace, platform=platform, source_id=source_id)

    def reply_stream(self, job_id: str) -> str:
        return self.REPLY_STREAM.format(ns=self.namespace, job_id=job_id)

    def reply_parts(self, platform: str, job_id: str) -> str:
        return self.REPLY_PARTS.format(ns=self.namespace, platform=platform, job_id=job_id)

    def discord_dm(self, job_id: str) -> str:
        return self.DISCORD_DM.format(ns=self.namespace, job_id=job_id)

    def slack_inbox(self) -> str:
        return self.SLACK_INBOX.format(ns=self.namespace)

    def slack_inbox_due(self) -> str:
        return self.SLACK_INBOX_DUE.format(ns=self.namespace)

    def slack_inbox_lease(self, event_id: str) -> str:
        return self.SLACK_INBOX_LEASE.format(ns=self.namespace, event_id=event_id)

    def answer(self, job_id: str) -> str:
        return self.ANSWER.format(ns=self.namespace, job_id=job_id)

    def feedback(self, rating_id: str) -> str:
        return self.FEEDBACK.format(ns=self.namespace, rating_id=rating_id)

    def feedback_times(self) -> str:
        return self.FEEDBACK_TIMES.format(ns=self.namespace)

    def feedback_counts(self) -> str:
        return self.FEEDBACK_COUNTS.format(ns=self.namespace)

    def worker_info(self) -> str:
        return self.WORKER_INFO.format(ns=self.namespace)

    def workers_loading(self) -> str:
        return self.WORKERS_LOADING.format(ns=self.namespace)
