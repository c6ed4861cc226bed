"""Per-channel behaviour from an optional file (``XWINBOT_CHANNELS_FILE``, YAML or TOML): a system prompt
(persona), sampling settings and answer length for Slack channels and for Discord channels or servers.

    slack:
      C0123ABCD: {system_prompt: "You are the SRE team's assistant. Be brief.", temperature: 0.2}
    discord:
      channels:
        "1180000000000000001": {max_new_tokens: 200}
      servers:
        "1170000000000000000": {system_prompt: "Answer as the support team's bot."}

The file is validated when the adapter starts (every problem named, the process does not start) and read again
whenever it changes on disk: a broken edit is logged and the last good rules stay in force. A Discord question
takes its channel's rule, else its thread's parent channel's, else its server's; what a person asks for
explicitly (``/ask temperature:``, ``length:``) wins over the channel's rule.
"""

from __future__ import annotations

import logging
import os
import threading
import tomllib
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.queue.job import MAX_SYSTEM_PROMPT_CHARS, GenerationOverrides

log = logging.getLogger(__name__)


class ChannelRule(BaseModel):
    """What one channel's questions are answered with; unset fields keep the worker's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: Annotated[str, Field(min_length=1, max_length=MAX_SYSTEM_PROMPT_CHARS)] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    max_new_tokens: int | None = Field(None, ge=1, le=4096)

    def overrides(self, asked: GenerationOverrides | None = None) -> GenerationOverrides:
        """The job's generation overrides: this rule's, with what the person asked for replacing them."""
        mine = self.model_dump(exclude_none=True, exclude={"system_prompt"})
        theirs = asked.model_dump(exclude_none=True) if asked else {}
        return GenerationOverrides(**{**mine, **theirs})


NO_RULE = ChannelRule()


class DiscordRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: dict[str, ChannelRule] = {}
    servers: dict[str, ChannelRule] = {}


class ChannelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slack: dict[str, ChannelRule] = {}
    discord: DiscordRules = DiscordRules()

    def for_slack(self, channel_id: str | None) -> ChannelRule:
        return self.slack.get(str(channel_id), NO_RULE)

    def for_discord(self, channel_id: object, parent_id: object = None, server_id: object = None) -> ChannelRule:
        for key, rules in ((channel_id, self.discord.channels), (parent_id, self.discord.channels),
                           (server_id, self.discord.servers)):
            if key is not None and str(key) in rules:
                return rules[str(key)]
        return NO_RULE


class ChannelsFileError(ValueError):
    """The channels file cannot be used; the message names the file and every problem in it."""


def parse(path: Path) -> ChannelsFile:
    """Read and validate a channels file; ChannelsFileError with every problem, one per line."""
    try:
        raw_text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ChannelsFileError(f"XWINBOT_CHANNELS_FILE={path}: cannot read it ({err.strerror or err})") from None
    try:
        data = tomllib.loads(raw_text) if path.suffix.lower() == ".toml" else yaml.safe_load(raw_text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ChannelsFileError(f"XWINBOT_CHANNELS_FILE={path}: not valid {syntax_of(path)}: {err}") from None
    try:
        return ChannelsFile.model_validate(data or {}, strict=False)
    except ValidationError as err:
        problems = [f"{'.'.join(map(str, p['loc'])) or 'file'}: {p['msg']}"
                    for p in err.errors(include_url=False, include_input=False)]
        raise ChannelsFileError(f"XWINBOT_CHANNELS_FILE={path}:\n  - " + "\n  - ".join(problems)) from None


def syntax_of(path: Path) -> str:
    return "TOML" if path.suffix.lower() == ".toml" else "YAML"


class ChannelRules:
    """The rules in force: the file as last read well, read again when its modification time or size changes."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path).expanduser() if path else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._rules = ChannelsFile()
        if self.path is not None:
            self._rules = parse(self.path)  # a broken file stops the adapter at start, with every problem named
            self._stamp = self._stat()

    def current(self) -> ChannelsFile:
        if self.path is None:
            return self._rules
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._rules = parse(self.path)
                    log.info("channels file %s reloaded", self.path)
                except ChannelsFileError as err:
                    log.error("channels file changed but cannot be used; keeping the previous rules. %s", err)
            return self._rules

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size
