"""The one job schema adapters enqueue and the worker answers: versioned JSON, validated, never pickled.

A job carries the conversation (newest user message last), who asked, where the answer goes and optional
generation overrides. ``Job.from_json`` turns *any* bad input into ``JobRejected`` with a short reason that
is safe to show the person who asked. This module imports neither torch nor transformers (adapters use it).
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
MAX_TEXT_CHARS = 100_000
MAX_TURNS = 200
MAX_ATTACHMENTS = 20  # files (and a chosen message) one question may carry
MAX_NOTE_CHARS = 500
MAX_SYSTEM_PROMPT_CHARS = 8000
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"  # RQ's job id rule, with a length bound
Platform = Literal["slack", "discord", "console", "api"]


class JobRejected(ValueError):
    """A job that cannot be answered; the message is short and safe to show a user."""


def _clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
Id = Annotated[Text, Field(max_length=1000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobTurn(_Model):
    role: Literal["user", "assistant"]
    text: Annotated[Text, Field(max_length=MAX_TEXT_CHARS)]


class Requester(_Model):
    platform: Platform
    user_id: Annotated[Id, Field(min_length=1)]
    display_name: Annotated[Text, Field(max_length=200)] | None = None

    @property
    def key(self) -> str:
        """Identifies the person across jobs (per-user limits)."""
        return f"{self.platform}:{self.user_id}"


class ReplyTarget(_Model):
    platform: Platform
    channel_id: Id | None = None
    thread_id: Id | None = None
    placeholder_id: Id | None = None
    interaction_token: Id | None = None
    application_id: Id | None = None
    # Slack's assistant view (an AI-app DM thread): the wait shows as the thread's loading status, and the answer
    # streams natively (chat.startStream) instead of into a placeholder. team_id: the asker's workspace, which
    # Slack's streaming wants with the recipient user.
    assistant: bool = False
    team_id: Id | None = None


class GenerationOverrides(_Model):
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    max_new_tokens: int | None = Field(None, ge=1, le=4096)


class Attachment(_Model):
    """A file (or a chosen message) the question is about, already read as text by the adapter."""

    name: Annotated[Text, Field(min_length=1, max_length=300)]
    text: Annotated[Text, Field(max_length=MAX_TEXT_CHARS)]


class Job(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    turns: tuple[JobTurn, ...] = Field(min_length=1, max_length=MAX_TURNS)
    requester: Requester
    reply_to: ReplyTarget
    overrides: GenerationOverrides = GenerationOverrides()
    # Context of the newest question: its files' text, and what the adapter could not read (said in the reply).
    attachments: tuple[Attachment, ...] = Field((), max_length=MAX_ATTACHMENTS)
    notes: tuple[Annotated[Text, Field(max_length=MAX_NOTE_CHARS)], ...] = Field((), max_length=2 * MAX_ATTACHMENTS)
    system_prompt: Annotated[Text, Field(max_length=MAX_SYSTEM_PROMPT_CHARS)] | None = None  # the channel's persona
    created_at: float = Field(default_factory=time.time, ge=0, allow_inf_nan=False)

    @field_validator("turns")
    @classmethod
    def _ends_with_a_question(cls, turns: tuple[JobTurn, ...]) -> tuple[JobTurn, ...]:
        if turns[-1].role != "user":
            raise ValueError("the last message must be the user's")
        if not turns[-1].text.strip():
            raise ValueError("the last message is empty")
        return turns

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Job:
        if isinstance(raw, (bytes, bytearray)):
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise JobRejected("invalid job: not valid UTF-8 text") from None
        if not isinstance(raw, str):
            raise JobRejected(f"invalid job: expected JSON text, got {type(raw).__name__}")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as err:
            raise JobRejected(_describe(err)) from None


def _describe(err: ValidationError) -> str:
    """One short line: the first problem (never the offending input itself) and how many more."""
    problems = err.errors(include_url=False, include_input=False, include_context=False)
    if any(p["loc"] == ("schema_version",) for p in problems):
        return f"invalid job: unsupported schema_version (this worker reads version {SCHEMA_VERSION})"
    first = problems[0]
    if first["type"] == "json_invalid":
        return f"invalid job: not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})"
    where = ".".join(str(part) for part in first["loc"]) or "job"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"invalid job: {where}: {message}{more}"


def job_id_for(platform: str, source_id: str, namespace: str | None = None) -> str:
    """A deterministic RQ job id for a platform's message/event id: the same event always gets the same id.

    Characters outside ``[A-Za-z0-9_-]`` become '-' and a hash of the original is appended, so different
    ids never collide; ids too long for RQ are replaced by their hash. ``namespace`` (a deployment's queue
    name, see ``worker.queue.keys``) goes first, so deployments sharing one Redis never share a job id
    (RQ's ``rq:job:<id>`` is global); None (the default deployment): the id carries no namespace.
    """
    if not source_id:
        raise ValueError("source_id must not be empty")
    prefix = _safe(platform)[:20] or "job"
    digest = hashlib.sha256(f"{platform}\x00{source_id}".encode("utf-8", "surrogatepass")).hexdigest()
    safe = _safe(source_id)
    if safe != source_id:
        safe = f"{safe}-{digest[:12]}"
    job_id = f"{prefix}-{safe}"
    if namespace is None:
        return job_id if len(job_id) <= 100 else f"{prefix}-h{digest[:64]}"
    if not namespace:
        raise ValueError("namespace must not be empty")
    ns = _safe(namespace)
    if ns != namespace:  # "a.b" and "a-b" are different deployments
        ns = f"{ns}-{hashlib.sha256(namespace.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    job_id = f"{ns}-{job_id}"
    if len(job_id) <= 100:
        return job_id
    digest = hashlib.sha256(f"{namespace}\x00{platform}\x00{source_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{ns[:24]}-{prefix}-h{digest[:48]}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)
