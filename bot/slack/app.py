"""The Slack side of xwinbot: a bolt app on Socket Mode (default) or HTTP, wired to the job queue.

    xwinbot slack        # XWINBOT_SLACK_BOT_TOKEN + XWINBOT_SLACK_APP_TOKEN (Socket Mode)
                         # or XWINBOT_SLACK_MODE=http + XWINBOT_SLACK_SIGNING_SECRET (POST /slack/events)

Bolt acknowledges every event before our listeners run. A global middleware drops events whose
``event_id`` was already seen (Slack retries an event it thinks was not acknowledged in time).
"""

from __future__ import annotations

import logging
import re

from redis import Redis
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient

from bot.access import Allowlist
from bot.channel_config import ChannelRules, ChannelsFileError
from bot.slack.files import SlackFiles
from bot.slack.questions import SlackOptions, SlackQuestions
from bot.slack.shortcut import CALLBACK_ID, MessageShortcut
from worker.ops.health_server import start_health_server
from worker.ops.preflight import SettingsProblem, raise_if_any, slack_problems
from worker.posters.slack import slack_client
from worker.queue.job_queue import job_queue
from worker.queue.redis_connection import redis_from_settings
from worker.queue.reply_index import ReplyIndex
from worker.settings import Settings

log = logging.getLogger(__name__)

EVENT_ID_TTL_S = 3600


def create_app(settings: Settings, redis: Redis) -> App:
    raise_if_any(slack_problems(settings))
    try:
        rules = ChannelRules(settings.channels_file)  # read once here; reloaded on change by ChannelRules itself
    except ChannelsFileError as err:
        raise SettingsProblem(f"cannot start:\n  - {err}") from None
    http_mode = settings.slack_mode == "http"
    app = App(
        client=slack_client(settings.slack_bot_token.get_secret_value(), settings.slack_api_url),
        signing_secret=settings.slack_signing_secret.get_secret_value() if http_mode else "",
        request_verification_enabled=http_mode,
    )
    queue = job_queue(settings, redis)
    app.use(drop_repeated_events(ReplyIndex(redis, queue.keys)))
    questions = SlackQuestions(
        queue, redis,
        Allowlist.of(channels=settings.slack_allowed_channels, users=settings.slack_allowed_users),
        SlackFiles.from_settings(settings), rules,
        SlackOptions(followups=settings.slack_followups, history_messages=settings.slack_history_messages),
    )
    app.event("app_mention")(questions.on_mention)
    app.event("message")(questions.on_message)
    app.event("reaction_added")(questions.on_reaction)
    shortcut = MessageShortcut(questions)
    app.shortcut(CALLBACK_ID)(shortcut.on_shortcut)
    app.view(CALLBACK_ID)(shortcut.on_submit)
    # Registered last, so it only gets what no listener above takes: events we do not act on (reaction_removed,
    # assistant_thread_started, types Slack adds later) are acknowledged quietly, not logged as unhandled.
    app.event(re.compile(".*"))(ignore_event)
    return app


def ignore_event() -> None:
    pass


def drop_repeated_events(index: ReplyIndex):
    """Bolt middleware: acknowledge an event id seen before and stop there."""

    def middleware(body: dict, context, next):  # noqa: A002 - bolt passes it by this name
        event_id = body.get("event_id")
        if event_id and not index.claim("slack-event", event_id, ttl_s=EVENT_ID_TTL_S):
            log.info("dropping repeated Slack event %s", event_id)
            return context.ack()
        return next()

    return middleware


def socket_mode_handler(app: App, settings: Settings) -> SocketModeHandler:
    return SocketModeHandler(
        app, settings.slack_app_token.get_secret_value(), web_client=WebClient(base_url=settings.slack_api_url)
    )


def serve_http(app: App, settings: Settings, host: str = "0.0.0.0") -> None:
    """Serve POST /slack/events with waitress (a production WSGI server); bolt verifies every signature."""
    import waitress
    from slack_bolt.adapter.wsgi import SlackRequestHandler

    waitress.serve(SlackRequestHandler(app), host=host, port=settings.slack_http_port, threads=8)


def run(settings: Settings) -> None:
    """Run the Slack adapter until interrupted (with its /metrics and /healthz)."""
    app = create_app(settings, redis_from_settings(settings))
    health = start_health_server(settings, "slack")
    try:
        if settings.slack_mode == "http":
            print(f"xwinbot slack: HTTP mode on port {settings.slack_http_port} (/slack/events)", flush=True)
            serve_http(app, settings)
        else:
            print("xwinbot slack: connecting over Socket Mode", flush=True)
            socket_mode_handler(app, settings).start()
    finally:
        if health:
            health.stop()
