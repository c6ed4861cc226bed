"""A loopback fake of an OpenAI-compatible server (vLLM's, llama.cpp's, ``xwinbot api``): ``/v1/chat/completions``
and ``/v1/models``, served by aiohttp on 127.0.0.1 for tests of the ``openai`` worker backend.

The real ``openai`` client talks to it over real sockets. The server runs its own asyncio loop in a daemon thread;
every public method is safe to call from any test thread. State lives under one lock.

    with FakeOpenAI(api_key="sk-test", model="fake-model") as fake:
        client = OpenAI(base_url=fake.base_url, api_key="sk-test")
        ...
        fake.requests[-1].body["messages"]   # what the client sent

Wire format (as OpenAI documents it and vLLM serves it):
- ``Authorization: Bearer <key>`` is checked first: a wrong or missing key answers 401 with OpenAI's error body
  (``{"error": {"message", "type", "param", "code": "invalid_api_key"}}``). ``api_key=None``: no key checked.
- an unknown ``model`` answers 404 (``The model `x` does not exist.``, vLLM's wording).
- a prompt longer than the context answers 400 with vLLM's wording: "This model's maximum context length is N
  tokens. However, you requested M tokens (P in the messages, C in the completion). …". A "token" here is a
  whitespace-separated word of the messages' contents (deterministic, no tokenizer).
- the answer is deterministic: ``answer`` if given, else ``You said: <the last user message>``; cut to
  ``max_tokens`` (or ``max_completion_tokens``) words with ``finish_reason: "length"``, else ``"stop"``.
- ``stream: true``: Server-Sent Events, one ``chat.completion.chunk`` per word (the first carries
  ``delta.role``), an empty delta with ``finish_reason``, a usage chunk when ``stream_options.include_usage``,
  then ``data: [DONE]``. ``word_delay_s`` paces the words. ``stream: false``: one ``chat.completion`` with usage.

Failures, each for the next request(s) (``fail_next(kind, times=1, ...)``):
- ``"500"``: 500 with an error body; ``"429"``: 429 with ``Retry-After: retry_after`` seconds (if given);
- ``"hang"``: accept the request and answer nothing until the client gives up (a read timeout);
- ``"drop"``: stream ``after_words`` words, then close the connection without ending the response;
- ``"stall"``: stream ``after_words`` words, then send nothing more until the client gives up.

Every request is kept in ``requests`` (``FakeRequest``: body, key, and how its answer ended, ``outcome``:
``"answered"``, ``"client_closed"`` when the client closed the stream before the end, ``"dropped"``, ``"hung"``,
or the status code it was refused with). ``wait_for(predicate)`` waits for the server side to catch up.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.loopback_server import LoopbackServer


@dataclass
class FakeRequest:
    body: dict
    key: str | None
    at: float = field(default_factory=time.monotonic)
    outcome: str = "running"  # answered | client_closed | dropped | hung | "<status>"
    words_sent: int = 0


@dataclass
class _Failure:
    kind: str
    retry_after: float | None = None
    after_words: int = 0


class FakeOpenAI(LoopbackServer):
    def __init__(self, api_key: str | None = "sk-test", model: str = "fake-model", *, answer: str | None = None,
                 word_delay_s: float = 0.0, context_tokens: int = 4096):
        self.api_key = api_key
        self.model = model
        self.answer = answer
        self.word_delay_s = word_delay_s
        self.context_tokens = context_tokens
        self.requests: list[FakeRequest] = []
        self.port: int | None = None
        self.base_url = ""
        self._cond = threading.Condition(threading.RLock())
        self._failures: collections.deque[_Failure] = collections.deque()
        self._in_flight = 0
        self.max_in_flight = 0  # most streams served at once
        self._stopping: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    thread_name = "fake-openai"

    def _on_port(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def _serve(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1, handler_cancellation=True)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _shutdown(self) -> None:
        self._stopping.set()  # hung and stalled answers end
        await self._runner.cleanup()

    # ------------------------------------------------------------------ test controls

    def fail_next(self, kind: str, times: int = 1, *, retry_after: float | None = None, after_words: int = 0) -> None:
        if kind not in ("500", "429", "hang", "drop", "stall"):
            raise ValueError(f"unknown failure {kind!r}")
        with self._cond:
            self._failures.extend(_Failure(kind, retry_after, after_words) for _ in range(times))

    def wait_for(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the fake OpenAI server never reached the expected state")
                self._cond.wait(min(left, 0.05))

    def text_for(self, messages: list[dict]) -> str:
        """The whole answer the fake gives to these messages (before any max_tokens cut)."""
        if self.answer is not None:
            return self.answer
        users = [m for m in messages if m.get("role") == "user"]
        return f"You said: {_content(users[-1]) if users else ''}"

    # ------------------------------------------------------------------ handlers

    async def _models(self, request: web.Request) -> web.Response:
        if (refused := self._refuse_key(request)) is not None:
            return refused
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        record = FakeRequest(body=body, key=_bearer(request))
        with self._cond:
            self.requests.append(record)
            failure = self._failures.popleft() if self._failures else None
        response = await self._answer(request, body, record, failure)
        return response

    async def _answer(self, request, body, record: FakeRequest, failure: _Failure | None) -> web.StreamResponse:
        if (refused := self._refuse_key(request)) is not None:
            return self._ended(record, str(refused.status), refused)
        if body.get("model") != self.model:
            return self._ended(record, "404", _error(404, f"The model `{body.get('model')}` does not exist.",
                                                     "NotFoundError", code=404))
        messages = body.get("messages") or []
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        prompt_tokens = sum(len(_content(m).split()) for m in messages)
        if prompt_tokens + max_tokens > self.context_tokens:
            message = (f"This model's maximum context length is {self.context_tokens} tokens. However, you "
                       f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                       f"{max_tokens} in the completion). Please reduce the length of the messages or completion.")
            return self._ended(record, "400", _error(400, message, "BadRequestError", param="messages", code=400))
        if failure and failure.kind == "500":
            return self._ended(record, "500", _error(500, "The server had an error while processing your request.",
                                                     "server_error"))
        if failure and failure.kind == "429":
            headers = {} if failure.retry_after is None else {"Retry-After": f"{failure.retry_after:g}"}
            return self._ended(record, "429", _error(429, "Rate limit reached, please try again later.",
                                                     "rate_limit_error", headers=headers))
        if failure and failure.kind == "hang":
            await self._hang(record)
            return web.Response(status=500)
        words = _words(self.text_for(messages))
        finish = "stop"
        if len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        reply_id = f"chatcmpl-{len(self.requests)}"
        if not body.get("stream"):
            text = "".join(words)
            return self._ended(record, "answered", web.json_response({
                "id": reply_id, "object": "chat.completion", "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish, "logprobs": None}],
                "usage": _usage(prompt_tokens, len(words)),
            }))
        return await self._stream(request, body, record, failure, words, finish, reply_id, prompt_tokens)

    async def _stream(self, request, body, record, failure, words, finish, reply_id, prompt_tokens):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        with self._cond:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

        def chunk(delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> bytes:
            data = {"id": reply_id, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": self.model, "choices": [] if usage else
                    [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
            if usage:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n".encode()

        try:
            for i, word in enumerate(words):
                if failure and failure.kind in ("drop", "stall") and i == failure.after_words:
                    if failure.kind == "drop":
                        request.transport.close()  # mid-response, the chunked body never ends
                        self._mark(record, "dropped")
                    else:
                        await self._hang(record)
                    return response
                delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                await response.write(chunk(delta))
                with self._cond:
                    record.words_sent += 1
                if self.word_delay_s:
                    await asyncio.sleep(self.word_delay_s)
            await response.write(chunk({}, finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(chunk({}, usage=_usage(prompt_tokens, len(words))))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self._mark(record, "answered")
        except (ConnectionError, asyncio.CancelledError):  # the client closed the stream before its end
            self._mark(record, "client_closed")
            raise
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()
        return response

    async def _hang(self, record: FakeRequest) -> None:
        self._mark(record, "hung")
        await self._stopping.wait()  # or cancelled when the client gives up

    def _refuse_key(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or _bearer(request) == self.api_key:
            return None
        return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")

    def _ended(self, record: FakeRequest, outcome: str, response: web.StreamResponse) -> web.StreamResponse:
        self._mark(record, outcome)
        return response

    def _mark(self, record: FakeRequest, outcome: str) -> None:
        with self._cond:
            if record.outcome == "running":  # the first end counts ("hung" stays, however the client leaves)
                record.outcome = outcome
            self._cond.notify_all()


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[len("Bearer "):] if auth.startswith("Bearer ") else None


def _content(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: the text ones
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _words(text: str) -> list[str]:
    """The text as pieces that join back to it exactly: each word with the space before it."""
    pieces = text.split(" ")
    return [pieces[0]] + [f" {p}" for p in pieces[1:]] if text else []


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _error(status: int, message: str, kind: str, *, param: Any = None, code: Any = None,
           headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status, headers=headers)
