"""Settings checked when a process starts, so a mistake is one clear sentence, not a traceback minutes later."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from redis.exceptions import RedisError

from worker.errors import RedisUnavailable
from worker.queue.redis_connection import TLS_SCHEMES, describe_failure, probe_client
from worker.settings import Settings

Role = Literal["worker", "slack", "discord", "api", "up", "client"]  # client: ask, chat, status (Redis only)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class SettingsProblem(ValueError):
    """One or more settings would stop this process; the message lists each with what to do."""


def check(settings: Settings, role: Role, redis_must_answer: bool = True) -> None:
    problems = redis_settings_problems(settings)
    if redis_must_answer and not problems:
        check_redis(settings)
    if role in ("worker", "up"):
        problems += backend_problems(settings) if settings.backend == "openai" else _model(settings) + _device(settings)
    if role in ("slack", "up"):
        problems += slack_problems(settings, required=role == "slack")
    if role in ("discord", "up"):
        problems += discord_problems(settings, required=role == "discord")
    if role == "api" and not settings.api_keys:
        problems.append("XWINBOT_API_KEYS is not set: give the API comma-separated name:key pairs")
    raise_if_any(problems)


def raise_if_any(problems: list[str]) -> None:
    if problems:
        raise SettingsProblem("cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def check_redis(settings: Settings) -> None:
    """RedisUnavailable, one line, when Redis does not answer this process as configured: nothing else matters
    then, so it is said alone and at once."""
    client = probe_client(settings)
    try:
        client.ping()
    except RedisError as err:
        raise RedisUnavailable(describe_failure(err, settings)) from None
    finally:
        client.close()


def redis_settings_problems(settings: Settings) -> list[str]:
    """The URL parses, and TLS files come with a TLS URL (a CA file on redis:// would quietly not be used)."""
    try:
        parsed = urlparse(settings.redis_url)
        parsed.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as err:
        return [f"XWINBOT_REDIS_URL: {err}"]
    if parsed.scheme not in ("redis", "rediss", "unix"):
        return ["XWINBOT_REDIS_URL must start with redis://, rediss:// (TLS) or unix://"]
    files = {"XWINBOT_REDIS_CA_FILE": settings.redis_ca_file, "XWINBOT_REDIS_CERT_FILE": settings.redis_cert_file,
             "XWINBOT_REDIS_KEY_FILE": settings.redis_key_file}
    problems = [f"{name} is set but XWINBOT_REDIS_URL is not rediss:// (TLS)"
                for name, value in files.items() if value and parsed.scheme not in TLS_SCHEMES]
    problems += [f"{name}={value}: no such file" for name, value in files.items()
                 if value and not Path(value).expanduser().is_file()]
    if bool(settings.redis_cert_file) != bool(settings.redis_key_file):
        problems.append("mutual TLS needs both XWINBOT_REDIS_CERT_FILE and XWINBOT_REDIS_KEY_FILE")
    return problems


def backend_problems(settings: Settings) -> list[str]:
    """XWINBOT_BACKEND=openai: no model is loaded here, the external server's URL and model name are needed."""
    problems = []
    url = settings.backend_url
    if not url:
        problems.append("XWINBOT_BACKEND=openai needs XWINBOT_BACKEND_URL, the server's base URL with /v1 "
                        "(e.g. http://vllm:8000/v1)")
    elif not url.startswith(("http://", "https://")):
        problems.append(f"XWINBOT_BACKEND_URL={url}: not an http:// or https:// URL")
    if not settings.backend_model:
        problems.append("XWINBOT_BACKEND=openai needs XWINBOT_BACKEND_MODEL, the model name the server serves "
                        "(its /v1/models lists them)")
    return problems


def _model(settings: Settings) -> list[str]:
    model = settings.model
    if model is None:
        return []
    looks_local = model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()
    if looks_local:
        path = Path(model).expanduser()
        if not path.is_dir():
            return [f"XWINBOT_MODEL={model}: no such directory"]
        if not (path / "config.json").is_file():
            return [f"XWINBOT_MODEL={model}: not a model directory (no config.json in it)"]
        return []
    if not HUB_ID.match(model):
        return [f"XWINBOT_MODEL={model}: neither an existing directory nor a Hub repo id like owner/name"]
    return []


def _device(settings: Settings) -> list[str]:
    if settings.device != "cuda":
        return []
    from worker.model.loader import pick_device  # torch and transformers: only for a worker that asks for a GPU

    try:
        pick_device(settings.device)
    except RuntimeError as err:
        return [f"{err}; use XWINBOT_DEVICE=auto or cpu, or give the container the GPU"]
    return []


def slack_problems(settings: Settings, required: bool = True) -> list[str]:
    configured = any((settings.slack_bot_token, settings.slack_app_token, settings.slack_signing_secret))
    if not (required or configured):
        return []
    problems = [] if settings.slack_bot_token else ["Slack needs XWINBOT_SLACK_BOT_TOKEN (xoxb-…)"]
    if settings.slack_mode == "socket" and not settings.slack_app_token:
        problems.append("Slack Socket Mode needs XWINBOT_SLACK_APP_TOKEN (xapp-…, scope connections:write); "
                        "or set XWINBOT_SLACK_MODE=http")
    if settings.slack_mode == "http" and not settings.slack_signing_secret:
        problems.append("Slack HTTP mode needs XWINBOT_SLACK_SIGNING_SECRET")
    for name, secret, prefix in (("BOT", settings.slack_bot_token, "xoxb-"),
                                 ("APP", settings.slack_app_token, "xapp-")):
        if secret and not secret.get_secret_value().startswith(prefix):
            problems.append(f"XWINBOT_SLACK_{name}_TOKEN does not start with {prefix} (is it the right token?)")
    return problems


def discord_problems(settings: Settings, required: bool = True) -> list[str]:
    if required and not settings.discord_token:
        return ["Discord needs XWINBOT_DISCORD_TOKEN (Developer Portal → Bot → Reset Token)"]
    return []
