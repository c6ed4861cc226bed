"""The Slack side of xwinbot: a bolt app on Socket Mode (default) or HTTP, wired to the job queue.

    xwinbot slack        # XWINBOT_SLACK_BOT_TOKEN + XWINBOT_SLACK_APP_TOKEN (Socket Mode)
                         # or XWINBOT_SLACK_MODE=http + XWINBOT_SLACK_SIGNING_SECRET (POST /slack/events)

Bolt acknowledges every event before our listeners run, so a global middleware first records the event in the
adapter's inbox (``bot.slack.inbox``), or refuses to acknowledge it when it cannot; an ``event_id`` already
seen is acknowledged and dropped (Slack retries an event it thinks was not acknowledged in time). Every event
listener clears the event's inbox entry once it is handled; ``run`` starts the inbox's recovery, which handles
again what a crashed adapter, or Slack's Web API being down, left there.

Slack's assistant view (``bot.slack.assistant``) is bolt's ``Assistant``, a global middleware registered after
the inbox's, so its events are recorded like every other; the buttons under answers (Stop, Regenerate, 👍/👎)
are ``bot.slack.actions``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from redis import Redis
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient

from bot.access import Allowlist
from bot.channel_config import ChannelRules, ChannelsFileError
from bot.slack.actions import SlackActions
from bot.slack.assistant import AssistantThreads
from bot.slack.files import SlackFiles
from bot.slack.inbox import Inbox
from bot.slack.questions import SlackOptions, SlackQuestions
from bot.slack.shortcut import CALLBACK_ID, MessageShortcut
from worker.feedback.store import FeedbackStore
from worker.ops.health_server import start_health_server
from worker.ops.preflight import SettingsProblem, raise_if_any, slack_problems
from worker.posters.slack import slack_client
from worker.posters.slack_controls import AGAIN_ACTION, FEEDBACK_ACTION, FEEDBACK_REASON_VIEW, STOP_ACTION
from worker.queue.job_queue import job_queue
from worker.queue.redis_connection import redis_from_settings
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlackAdapter:
    app: App
    inbox: Inbox


def create_app(settings: Settings, redis: Redis) -> App:
    return create_adapter(settings, redis).app


def create_adapter(settings: Settings, redis: Redis) -> SlackAdapter:
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
    inbox = Inbox(redis, queue.keys, app.client, give_up_s=settings.slack_question_retry_s)
    app.use(inbox.middleware)
    questions = SlackQuestions(
        queue, redis,
        Allowlist.of(channels=settings.slack_allowed_channels, users=settings.slack_allowed_users),
        SlackFiles.from_settings(settings), rules,
        SlackOptions(followups=settings.slack_followups, history_messages=settings.slack_history_messages,
                     native_streaming=settings.slack_native_streaming),
    )
    # A global middleware after the inbox's: it takes the assistant threads' events before the listeners below.
    app.assistant(AssistantThreads(questions, settings.slack_suggested_prompts).assistant(inbox))
    for event_type, handler in {"app_mention": questions.on_mention, "message": questions.on_message,
                                "reaction_added": questions.on_reaction}.items():
        app.event(event_type)(inbox.listener(event_type, handler))
    shortcut = MessageShortcut(questions)
    app.shortcut(CALLBACK_ID)(shortcut.on_shortcut)
    app.view(CALLBACK_ID)(shortcut.on_submit)
    actions = SlackActions(questions, FeedbackStore(redis, queue.keys, settings.feedback_retention_days))
    app.action(STOP_ACTION)(actions.on_stop)
    app.action(AGAIN_ACTION)(actions.on_again)
    app.action(FEEDBACK_ACTION)(actions.on_feedback)
    app.view(FEEDBACK_REASON_VIEW)(actions.on_reason)
    # Registered last, so it only gets what no listener above takes: events we do not act on (reaction_removed,
    # types Slack adds later) are acknowledged quietly, not logged as unhandled.
    app.event(re.compile(".*"))(inbox.listener(None, ignore_event))
    return SlackAdapter(app, inbox)


def ignore_event(event: dict, client: WebClient, context: dict) -> None:
    pass


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
    adapter = create_adapter(settings, redis_from_settings(settings))
    app = adapter.app
    adapter.inbox.start_recovery()  # what a crashed adapter or a Slack outage left, now and every second
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
