"""Shared pieces of the fault tests against the platform fakes: one side per platform (ask a question, read
what the thread shows, when the bot last wrote to it), and posters that remember the final answer they were
given, so a test can check that the thread shows exactly that answer, once.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from tests.helpers.discord_helpers import bot_messages
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, bot_replies, mention, unique
from worker.posters.discord import DiscordPoster
from worker.posters.discord import message_parts as discord_parts
from worker.posters.discord_rest import DiscordRest
from worker.posters.slack import SlackPoster, slack_client
from worker.posters.slack_text import message_parts
from worker.posters.status_text import is_status_text
from worker.queue.job_queue import SERIALIZER
from worker.queue.keys import RedisKeys
from worker.queue.reply_index import ReplyIndex
from worker.serve import WorkerProcess
from worker.settings import Settings

COUNTING = "Count from 1 to 300, one number per line."
PART_LIMIT = 80  # small message parts, so answers continue in new messages (which must never be posted twice)


def rq_status(redis: Redis, job_id: str) -> JobStatus | None:
    try:
        return RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).get_status()
    except NoSuchJobError:
        return None


def rq_result(redis: Redis, job_id: str) -> dict | None:
    return RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).return_value()


def finished(redis: Redis, job_id: str) -> bool:
    return rq_status(redis, job_id) in (JobStatus.FINISHED, JobStatus.FAILED)


def recording(poster_class: type, finals: dict[str, str]) -> type:
    """``poster_class`` that also notes each job's final answer text (the worker's own poster, unchanged)."""

    class Recording(poster_class):
        def finish(self, job, text):
            finals[job.job_id] = text
            super().finish(job, text)

    return Recording


@dataclass
class SlackSide:
    fake: object
    redis: Redis
    keys: RedisKeys  # the deployment's (its job ids carry its name)
    limit: int = PART_LIMIT
    threads: dict[str, tuple[str, str]] = field(default_factory=dict)  # job id -> (channel, thread ts)

    def ask(self, prompt: str = COUNTING, user: str = "U1") -> str:
        event = mention(self.fake, unique("C"), prompt, user=user)
        self.fake.send_event(event)
        job_id = self.keys.job_id("slack", f"{event['channel']}-{event['ts']}")
        self.threads[job_id] = (event["channel"], event["ts"])
        return job_id

    def visible(self, job_id: str) -> list[str]:
        """The bot's messages in the question's thread, as people see them."""
        return [self.fake.shown_in(m) for m in bot_replies(self.fake, *self.threads[job_id])]

    def shown_ever(self, job_id: str) -> list[str]:
        """Every text the thread's bot messages ever showed (edits included)."""
        channel, thread_ts = self.threads[job_id]
        return [text for m in bot_replies(self.fake, channel, thread_ts)
                for text in self.fake.history_of(channel, m["ts"])]

    def expected(self, final: str) -> list[str]:
        return message_parts(final, self.limit)

    def deletions(self) -> int:
        return len([c for c in self.fake.calls_to("chat.delete") if c.status == 200])

    def last_write_at(self, job_id: str) -> float:
        channel, _ = self.threads[job_id]
        return max(c.at for c in self.fake.calls if c.status == 200 and c.args.get("channel") == channel
                   and c.method in ("chat.postMessage", "chat.update"))


@dataclass
class DiscordSide:
    fake: object
    redis: Redis
    keys: RedisKeys
    limit: int = PART_LIMIT

    def ask(self, prompt: str = COUNTING, user: int = 4001) -> str:
        interaction = self.fake.slash_command("ask", {"prompt": prompt}, user_id=user)
        return self.keys.job_id("discord", f"ask-{interaction['id']}")

    def thread_id(self, job_id: str) -> str:
        job = ReplyIndex(self.redis, self.keys).job(job_id)
        return job.reply_to.thread_id or job.reply_to.channel_id

    def visible(self, job_id: str) -> list[str]:
        return [m["content"] for m in bot_messages(self.fake, self.thread_id(job_id))]

    def shown_ever(self, job_id: str) -> list[str]:
        thread = self.thread_id(job_id)
        return [text for m in bot_messages(self.fake, thread) for text in self.fake.history_of(thread, m["id"])]

    def expected(self, final: str) -> list[str]:
        return discord_parts(final, self.limit)

    def deletions(self) -> int:
        return len([r for r in self.fake.requests if r.method == "DELETE" and r.status in (200, 204)])

    def last_write_at(self, job_id: str) -> float:
        thread = self.thread_id(job_id)
        return max(r.at for r in self.fake.requests if r.status == 200 and r.method in ("POST", "PATCH")
                   and f"/channels/{thread}/messages" in r.path)


def streaming(side, job_id: str) -> bool:
    """The answer has begun to show (its placeholder no longer says thinking…)."""
    try:
        shown = side.visible(job_id)
    except AttributeError:  # the adapter has not remembered the job yet
        return False
    return bool(shown) and not is_status_text(shown[0])


def slack_poster_factory(finals: dict[str, str], client, redis: Redis, keys: RedisKeys, limit: int = PART_LIMIT):
    poster_class = recording(SlackPoster, finals)
    return lambda: poster_class(client, redis, keys, limit=limit)


def discord_poster_factory(finals: dict[str, str], rest, redis: Redis, keys: RedisKeys, limit: int = PART_LIMIT):
    poster_class = recording(DiscordPoster, finals)
    return lambda: poster_class(rest, redis, keys, limit=limit)


def both_platforms_settings(slack_fake, discord_fake, queue_name: str, demo_dir, **extra) -> Settings:
    """A worker (and adapters) for both fakes on the demo model, streaming edits about three times a second."""
    values = dict(temperature=0.0, max_new_tokens=90, max_context_tokens=1024, update_interval_s=0.3,
                  position_interval_s=0.5)
    return Settings(
        slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_signing_secret=SIGNING_SECRET,
        slack_api_url=slack_fake.api_url, discord_token=discord_fake.bot_token, discord_api_url=discord_fake.api_base,
        discord_dev_guild_id=discord_fake.guild_id, queue_name=queue_name, model=str(demo_dir), device="cpu",
        **{**values, **extra},
    )


@contextmanager
def recording_worker(settings: Settings, redis: Redis, slack_fake, discord_fake, finals: dict[str, str]):
    """The worker in this process, with its own posters for both fakes noting every final answer in ``finals``."""
    keys = RedisKeys.for_settings(settings)
    posters = {
        "slack": slack_poster_factory(finals, slack_client(BOT_TOKEN, slack_fake.api_url), redis, keys),
        "discord": discord_poster_factory(finals, DiscordRest(discord_fake.bot_token, discord_fake.api_base), redis,
                                          keys),
    }
    process = WorkerProcess(settings, redis, posters=posters, serve_health=False)
    process.start()
    try:
        yield process
    finally:
        process.stop()
