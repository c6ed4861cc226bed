"""An OpenAI chat-completions request body → the job it asks for, or ``ApiError`` (OpenAI's error shape).

What maps to what: system (and developer) messages → the job's ``system_prompt``; user/assistant messages (content
as a string or a list of text parts) → the job's turns (``bot.conversation.build_turns``: merged, cleaned);
``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens`` → ``GenerationOverrides`` with its limits.
Everything the engine cannot do (``n`` > 1, tools, JSON mode, logprobs, stop sequences, penalties) is a clear 400
rather than silently ignored; unknown fields are refused like OpenAI refuses them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pydantic import ValidationError

from bot.conversation import build_turns, clean_text, is_blank
from worker.queue.job import MAX_SYSTEM_PROMPT_CHARS, MAX_TEXT_CHARS, GenerationOverrides, JobTurn

MAX_BODY_BYTES = 4_000_000
# Fields a client may send that change nothing here (or whose neutral value is all that is accepted below).
ACCEPTED = {"model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
            "max_completion_tokens", "n", "user", "seed", "metadata", "store", "tools", "tool_choice", "functions",
            "function_call", "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "stop",
            "presence_penalty", "frequency_penalty", "logit_bias", "service_tier"}


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    turns: list[JobTurn]
    system_prompt: str | None
    overrides: GenerationOverrides
    stream: bool
    include_usage: bool


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


def parse_chat_request(body: bytes, content_type: str | None) -> ChatRequest:
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise bad("the body must be JSON, sent with Content-Type: application/json", code="invalid_content_type")
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES:,} bytes", code="request_too_large")
    try:
        raw = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise bad(f"the body is not valid JSON ({type(err).__name__})", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise bad("the body must be a JSON object", code="invalid_json")
    unknown = sorted(set(raw) - ACCEPTED)
    if unknown:
        raise bad(f"Unrecognized request argument supplied: {unknown[0][:100]}", param=unknown[0][:100],
                  code="unrecognized_argument")
    _refuse_unsupported(raw)
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise bad("you must give `model` (GET /v1/models lists it)", param="model")
    system_prompt, turns = _conversation(raw.get("messages"))
    stream = raw.get("stream") or False
    if not isinstance(stream, bool):
        raise bad("`stream` must be true or false", param="stream")
    options = raw.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("`stream_options` must be an object", param="stream_options")
    return ChatRequest(model=model, turns=turns, system_prompt=system_prompt, overrides=_overrides(raw),
                       stream=stream, include_usage=bool(options.get("include_usage")))


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _refuse_unsupported(raw: dict) -> None:
    if raw.get("n") not in (None, 1):
        raise bad("only n=1 is supported: ask again for another answer", param="n")
    for field in ("tools", "functions"):
        if raw.get(field):
            raise bad(f"`{field}` (function calling) is not supported by this model server", param=field)
    if raw.get("tool_choice") not in (None, "none", "auto") or raw.get("function_call") not in (None, "none", "auto"):
        raise bad("tool choice is not supported by this model server", param="tool_choice")
    response_format = raw.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise bad("only response_format {\"type\": \"text\"} is supported (no JSON mode)", param="response_format")
    if raw.get("logprobs") or raw.get("top_logprobs"):
        raise bad("logprobs are not supported", param="logprobs")
    if raw.get("stop") not in (None, [], ""):
        raise bad("stop sequences are not supported (the answer ends at the model's own turn markers)", param="stop")
    for field in ("presence_penalty", "frequency_penalty"):
        if raw.get(field) not in (None, 0, 0.0):
            raise bad(f"`{field}` is not supported (only 0)", param=field)
    if raw.get("logit_bias"):
        raise bad("`logit_bias` is not supported", param="logit_bias")


def _conversation(messages: object) -> tuple[str | None, list[JobTurn]]:
    if not isinstance(messages, list) or not messages:
        raise bad("`messages` must be a non-empty list", param="messages")
    system, pairs = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad(f"{where}.role must be system, developer, user or assistant (tool messages are not "
                      "supported)", param=f"{where}.role")
        text = _text(message.get("content"), f"{where}.content", role)
        if len(text) > MAX_TEXT_CHARS:
            raise bad(f"{where} is too long: {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}",
                      param=f"{where}.content", code="context_length_exceeded")
        (system if role in ("system", "developer") else pairs).append((role, text))
    last = pairs[-1] if pairs else None
    if last is None or last[0] != "user" or is_blank(clean_text(last[1])):
        raise bad("the last message (after any system message) must be the user's, and not empty", param="messages")
    system_prompt = "\n\n".join(clean_text(text).strip() for _, text in system if text.strip()) or None
    if system_prompt and len(system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise bad(f"the system prompt is too long: {len(system_prompt):,} characters; the limit is "
                  f"{MAX_SYSTEM_PROMPT_CHARS:,}", param="messages", code="context_length_exceeded")
    return system_prompt, build_turns(pairs)


def _text(content: object, where: str, role: str) -> str:
    if content is None and role == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}[{j}] must be a text part ({{\"type\": \"text\", \"text\": …}}); images, audio "
                          "and files are not supported", param=f"{where}[{j}]")
            parts.append(part["text"])
        return "\n".join(parts)
    raise bad(f"{where} must be a string or a list of text parts", param=where)


def _overrides(raw: dict) -> GenerationOverrides:
    values = {"temperature": raw.get("temperature"), "top_p": raw.get("top_p")}
    max_tokens = raw.get("max_completion_tokens", raw.get("max_tokens"))
    param_of = {"max_new_tokens": "max_completion_tokens" if "max_completion_tokens" in raw else "max_tokens"}
    values["max_new_tokens"] = max_tokens
    for name, value in values.items():
        if value is None:
            continue
        wrong = isinstance(value, bool) or not isinstance(value, (int, float))
        wrong = wrong or (name == "max_new_tokens" and not isinstance(value, int)) or not math.isfinite(value)
        if wrong:
            param = param_of.get(name, name)
            raise bad(f"`{param}` must be a {'whole ' if name == 'max_new_tokens' else ''}number", param=param)
    try:
        return GenerationOverrides(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        problem = err.errors(include_url=False, include_input=False)[0]
        name = str(problem["loc"][0])
        param = param_of.get(name, name)
        raise bad(f"`{param}`: {problem['msg']}", param=param) from None
