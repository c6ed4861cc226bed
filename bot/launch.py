"""Start the chat adapters whose settings are present, in the background (for ``xwinbot up``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.queue.redis_connection import redis_from_settings
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class RunningAdapters:
    names: list[str] = field(default_factory=list)
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        for stop in self.stoppers:
            try:
                stop()
            except Exception:
                log.warning("an adapter did not stop cleanly", exc_info=True)


def start_adapters(settings: Settings) -> RunningAdapters:
    running = RunningAdapters()
    if settings.slack_bot_token:
        running.names.append(f"Slack ({settings.slack_mode} mode)")
        running.stoppers.append(start_slack(settings))
    if settings.discord_token:
        running.names.append("Discord")
        running.stoppers.append(start_discord(settings))
    return running


def start_slack(settings: Settings) -> Callable[[], None]:
    from bot.slack.app import create_app, serve_http, socket_mode_handler

    app = create_app(settings, redis_from_settings(settings))
    if settings.slack_mode == "http":
        threading.Thread(target=serve_http, args=(app, settings), name="xwinbot-slack-http", daemon=True).start()
        return lambda: None  # a daemon thread: ends with the process
    handler = socket_mode_handler(app, settings)
    handler.connect()
    return handler.close


def start_discord(settings: Settings) -> Callable[[], None]:
    """The Discord bot on its own event loop in a background thread; the returned function closes it."""
    import asyncio

    from bot.discord.client import create_bot

    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()

    async def serve() -> None:
        bot = create_bot(settings, redis_from_settings(settings))
        running = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        await bot.close()  # closed inside its own loop, so its HTTP session and gateway close cleanly
        if running.done() and running.exception():
            log.error("the Discord adapter stopped: %s", running.exception())

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="xwinbot-discord", daemon=True)
    thread.start()

    def stop() -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=15)

    return stop
