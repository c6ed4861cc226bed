"""Shared pieces of the Slack tests: unique ids, a Redis client, and our Slack app connected to a fake Slack."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

from redis import Redis

from bot.slack.app import create_adapter, socket_mode_handler
from worker.settings import Settings

BOT_TOKEN, APP_TOKEN, SIGNING_SECRET = "xoxb-test", "xapp-test", "test-signing-secret"


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:10].upper()


def slack_settings(fake, queue_name: str, **extra) -> Settings:
    return Settings(
        slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_signing_secret=SIGNING_SECRET,
        slack_api_url=fake.api_url, queue_name=queue_name, **extra,
    )


@contextmanager
def connected_app(fake, settings: Settings, redis: Redis):
    """Our real bolt app on the real Socket Mode client, connected to ``fake``, with its inbox's recovery running
    (as ``xwinbot slack`` runs it)."""
    adapter, stop = create_adapter(settings, redis), threading.Event()
    handler = socket_mode_handler(adapter.app, settings)
    recovery = adapter.inbox.start_recovery(stop)
    handler.connect()
    fake.wait_connected()
    try:
        yield adapter.app
    finally:
        handler.close()
        stop.set()
        recovery.join(5)


def mention(fake, channel: str, text: str, user: str = "U1", thread_ts: str | None = None) -> dict:
    """A person posts ``text`` mentioning the bot: stored in the fake, and the app_mention event it causes."""
    ts = fake.add_user_message(channel, user, f"<@{fake.bot_user_id}> {text}", thread_ts=thread_ts)
    event = {"type": "app_mention", "user": user, "text": f"<@{fake.bot_user_id}> {text}", "ts": ts,
             "channel": channel, "event_ts": ts, "channel_type": "channel"}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message(fake, channel: str, text: str, user: str = "U1", thread_ts: str | None = None,
            channel_type: str = "channel") -> dict:
    ts = fake.add_user_message(channel, user, text, thread_ts=thread_ts)
    event = {"type": "message", "user": user, "text": text, "ts": ts, "channel": channel, "event_ts": ts,
             "channel_type": channel_type}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def bot_replies(fake, channel: str, thread_ts: str | None = None) -> list[dict]:
    messages = fake.thread(channel, thread_ts) if thread_ts else fake.messages(channel)
    return [m for m in messages if m.get("bot_id") == fake.bot_id]
