"""The reply posters a worker process can use, by platform, built from the settings."""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis

from worker.posters.base import Poster
from worker.posters.console import ConsolePoster
from worker.queue.keys import RedisKeys
from worker.settings import Settings


def posters_from_settings(settings: Settings, redis: Redis) -> dict[str, Callable[[], Poster]]:
    """platform -> a factory making one job's poster. Console and the HTTP API (``xwinbot api`` reads the same
    per-job reply stream as the console) always; Slack and Discord when their tokens are set."""
    keys = RedisKeys.for_settings(settings)
    posters: dict[str, Callable[[], Poster]] = {"console": lambda: ConsolePoster(redis, keys),
                                                "api": lambda: ConsolePoster(redis, keys)}
    if settings.slack_bot_token:
        from worker.posters.slack import SlackPoster, slack_client

        client = slack_client(settings.slack_bot_token.get_secret_value(), settings.slack_api_url)
        streaming = settings.slack_native_streaming
        posters["slack"] = lambda: SlackPoster(client, redis, keys, native_streaming=streaming)
    if settings.discord_token:
        from worker.posters.discord import DiscordPoster
        from worker.posters.discord_rest import DiscordRest

        rest = DiscordRest(settings.discord_token.get_secret_value(), settings.discord_api_url)
        posters["discord"] = lambda: DiscordPoster(rest, redis, keys)
    return posters
