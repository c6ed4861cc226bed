"""Start the chat adapters whose settings are present, in the background (for ``xwinbot up``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
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
    """Each configured adapter, started; an adapter that cannot start (a bad channels file, …) raises here, in the
    caller's thread, after the ones already started were stopped: ``xwinbot up`` then prints one clear message and
    exits non-zero instead of running on without it."""
    running = RunningAdapters()
    try:
        if settings.channels_file:
            from bot.channel_config import ChannelRules

            ChannelRules(settings.channels_file)  # ChannelsFileError naming every problem, before anything starts
        if settings.slack_bot_token:
            running.stoppers.append(start_slack(settings))
            running.names.append(f"Slack ({settings.slack_mode} mode)")
        if settings.discord_token:
            running.stoppers.append(start_discord(settings))
            running.names.append("Discord")
        if settings.api_keys:
            from bot.api.app import start_in_thread

            running.stoppers.append(start_in_thread(settings))
            running.names.append(f"HTTP API (http://{settings.api_host}:{settings.api_port}/v1)")
    except Exception:
        running.stop()
        raise
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
    created: Future[None] = Future()  # the bot was made, or why not (raised in the caller, not in the thread)

    async def serve() -> None:
        try:
            bot = create_bot(settings, redis_from_settings(settings))
        except Exception as err:
            created.set_exception(err)
            return
        created.set_result(None)
        running = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        await bot.close()  # closed inside its own loop, so its HTTP session and gateway close cleanly
        if running.done() and running.exception():
            log.error("the Discord adapter stopped: %s", running.exception())

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="xwinbot-discord", daemon=True)
    thread.start()
    try:
        created.result(timeout=60)
    except BaseException:
        thread.join(timeout=15)
        if not thread.is_alive():
            loop.close()
        raise

    def stop() -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=15)

    return stop
