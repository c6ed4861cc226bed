"""``XWINBOT_BACKEND=openai``: answers streamed from an external OpenAI-compatible server (vLLM, llama.cpp's
server, another xwinbot's ``xwinbot api``) instead of a model loaded here.

    backend = OpenAIBackend(settings)        # XWINBOT_BACKEND_URL, _KEY, _MODEL, _TIMEOUT_S
    backend.start()
    stream = backend.submit([Turn("user", "Hi")], params, system_prompt=None)  # errors known at once raise here
    for text in stream.batches(0.25):  # what arrived meanwhile, as one piece; stream.cancel() closes the stream
        print(text, end="")

It speaks only the wire format (``POST {url}/chat/completions`` with ``stream: true``, Server-Sent Events of
``chat.completion.chunk``), through the official ``openai`` client. There is no engine thread: each answer is one
streaming HTTP request made and read by the RQ job thread that runs the job, so XWINBOT_MAX_BATCH answers are in
flight at once (the worker runs that many job threads, plus two) and the server batches them.

What its answers become (``worker.tasks`` turns each into the reply):
- 401/403: ``BackendRefused`` ("refused this bot's key"); 404: ``BackendRefused`` ("has no model X");
- 400 about the context length: ``BackendPromptTooLong`` (a ``PromptTooLong``): the oldest turns are dropped
  first, as our own engine trims history, and ``submit_fitting`` shortens attached files; a question too long
  alone gets the same reply our engine gives. Other 400/422s: ``BackendRefused`` with the server's message;
- 429: waited out (``Retry-After``, else 1, 2, 4… s) for up to XWINBOT_DELIVERY_RETRY_S, then ``BackendRefused``
  ("busy, ask again");
- 5xx, a timeout (XWINBOT_BACKEND_TIMEOUT_S of silence: connecting, before the first token or between two), a
  refused or dropped connection, before or during the answer: ``BackendUnavailable``: the job raises it and RQ
  runs it again per the job's Retry (the reply restarts), the last attempt tells the user.
The client never retries on its own (``max_retries=0``): the job's retry rules are the only ones. The key goes
only into the Authorization header; no log line and no reply holds it.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import openai

from worker.errors import BackendRefused, BackendUnavailable, PromptTooLong
from worker.inference.prompt import Turn
from worker.inference.sampling import GenerationParams
from worker.settings import Settings

log = logging.getLogger(__name__)

NO_KEY = "EMPTY"  # what the client sends with no XWINBOT_BACKEND_KEY (vLLM's documented placeholder)
MAX_RATE_LIMIT_WAIT_S = 30.0  # one wait on a 429, whatever its Retry-After says
CONTEXT_WORDS = ("context length", "context window", "maximum context", "too many tokens", "prompt is too long")


class BackendPromptTooLong(PromptTooLong):
    """The server said the conversation does not fit its context (HTTP 400): the same reply as our engine's."""

    def __init__(self, server_message: str, max_new_tokens: int):
        limit = re.search(r"maximum context length is (\d+)", server_message)
        prompt = re.search(r"\((\d+) in the messages", server_message)
        if limit and prompt:
            super().__init__(int(prompt.group(1)), max(0, int(limit.group(1)) - max_new_tokens))
        else:  # a server that does not say the numbers
            self.prompt_tokens = self.limit = None
            ValueError.__init__(self, "Your message is too long for the model's context. Please shorten it.")
        self.server_message = server_message


@dataclass(frozen=True)
class BackendStats:
    """What ``worker.ops.metrics.EngineCollector`` reads (the names of ``EngineStats``)."""

    decoding: int  # answers streaming now
    max_batch_seen: int  # most answers streaming at once so far
    waiting: int  # always 0: the server queues, not us
    tokens_generated: int


class OpenAIStream:
    """One answer streaming from the server; read by the job thread that submitted it (the ``AnswerStream``
    surface: ``batches``, iteration, ``cancel``, ``tokens``, ``first_token_at``, ``last_token_at``, ``cancelled``,
    ``finished``, ``error``; plus ``prompt_tokens`` and ``finish_reason`` when the server says them)."""

    def __init__(self, backend: OpenAIBackend, response, submitted_at: float):
        self._backend = backend
        self._response = response  # openai.Stream of ChatCompletionChunk
        self._lock = threading.Lock()
        self.text = ""
        self.tokens = 0  # content chunks so far (one token each on vLLM), the server's count once it sends usage
        self.prompt_tokens: int | None = None
        self.finish_reason: str | None = None
        self.cancelled = False
        self.finished = False
        self.error: BaseException | None = None
        self.submitted_at = submitted_at
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces()

    def batches(self, interval: float) -> Iterator[str]:
        """The text that arrived meanwhile as one piece, at most once per ``interval`` seconds (the first piece
        at once); the rest when the answer ends."""
        pending: list[str] = []
        due = 0.0
        for piece in self._pieces():
            pending.append(piece)
            if time.monotonic() >= due:
                yield "".join(pending)
                pending, due = [], time.monotonic() + interval
        if pending and not self.cancelled:
            yield "".join(pending)

    def cancel(self) -> None:
        """Stop this answer: the HTTP stream is closed (the server sees the connection go and stops generating)."""
        with self._lock:
            if self.finished:
                return
            self.cancelled = True
        self._close()

    def _pieces(self) -> Iterator[str]:
        usage_tokens = None
        try:
            for chunk in self._response:
                if self.cancelled:
                    return
                if chunk.usage is not None:
                    usage_tokens = chunk.usage.completion_tokens
                    self.prompt_tokens = chunk.usage.prompt_tokens
                for choice in chunk.choices or ():
                    if choice.finish_reason:
                        self.finish_reason = choice.finish_reason
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        self._got(piece)
                        yield piece
                        if self.cancelled:
                            return
            if usage_tokens is not None:
                self.tokens = usage_tokens
        except Exception as err:
            if self.cancelled:  # reading a stream we closed
                return
            self.error = self._backend.unavailable(err, during=True)
            raise self.error from err
        finally:
            with self._lock:
                self.finished = True
            self._close()

    def _got(self, piece: str) -> None:
        self.last_token_at = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = self.last_token_at
        self.text += piece
        self.tokens += 1
        self._backend._tokens(1)

    def _close(self) -> None:
        try:
            self._response.close()
        except Exception:  # already closed, or closing a broken connection
            pass
        self._backend._forget(self)


class OpenAIBackend:
    """The engine's interface (``submit``, ``start``, ``stop``, ``running``, ``stats``, ``max_batch``) over an
    OpenAI-compatible server."""

    name = "openai"

    def __init__(self, settings: Settings, client: openai.OpenAI | None = None,
                 rate_limit_window_s: float | None = None):
        if not settings.backend_url or not settings.backend_model:
            raise ValueError("XWINBOT_BACKEND=openai needs XWINBOT_BACKEND_URL and XWINBOT_BACKEND_MODEL")
        self.url = settings.backend_url.rstrip("/")
        self.model = settings.backend_model
        self.max_batch = settings.max_batch
        self.system_prompt = settings.system_prompt
        self.send_top_k = settings.backend_top_k
        self.defaults = GenerationParams(settings.temperature, settings.top_p, settings.top_k, settings.max_new_tokens)
        # A 429 is waited out for as long as a reply is retried while the chat platform is down.
        self.rate_limit_window_s = settings.delivery_retry_s if rate_limit_window_s is None else rate_limit_window_s
        key = settings.backend_key.get_secret_value() if settings.backend_key else NO_KEY
        self.client = client or openai.OpenAI(base_url=self.url, api_key=key, max_retries=0,
                                              timeout=settings.backend_timeout_s)
        self._lock = threading.Lock()
        self._open: set[OpenAIStream] = set()
        self._max_open = self._tokens_total = 0
        self._started = self._stopping = False
        self._stopped = threading.Event()  # wakes a 429 wait when the worker stops

    # ----- the engine's surface ----------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True

    def stop(self) -> None:
        """Answers still streaming end with BackendUnavailable (their jobs are retried), like our engine's."""
        self._stopping = True
        self._stopped.set()
        with self._lock:
            streams = list(self._open)
        for stream in streams:
            stream._close()
        self.client.close()

    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    @property
    def stats(self) -> BackendStats:
        with self._lock:
            return BackendStats(decoding=len(self._open), max_batch_seen=self._max_open, waiting=0,
                                tokens_generated=self._tokens_total)

    def submit(self, turns: Sequence[Turn], params: GenerationParams | None = None,
               system_prompt: str | None = None) -> OpenAIStream:
        """Start streaming the answer. Raises here what the server says before the first token: PromptTooLong
        (after dropping old turns did not help), BackendRefused, BackendUnavailable."""
        if self._stopping:
            raise BackendUnavailable("the worker is stopping")
        params = params or self.defaults
        turns = list(turns)
        while True:
            try:
                return self._open_stream(self.messages(turns, system_prompt), params)
            except BackendPromptTooLong:
                if len(turns) <= 1:
                    raise
                turns = turns[2:] if len(turns) > 2 else turns[1:]  # the oldest question and its answer

    def messages(self, turns: Sequence[Turn], system_prompt: str | None = None) -> list[dict]:
        """The job's system prompt (else XWINBOT_SYSTEM_PROMPT, else none: the server's template decides), then
        the turns."""
        system = self.system_prompt if system_prompt is None else system_prompt
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": turn.role, "content": turn.text} for turn in turns]

    def request_of(self, messages: list[dict], params: GenerationParams) -> dict:
        request = dict(model=self.model, messages=messages, stream=True, stream_options={"include_usage": True},
                       temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens)
        if self.send_top_k and params.top_k:
            request["extra_body"] = {"top_k": params.top_k}  # vLLM's extra sampling parameter
        return request

    # ----- one request ---------------------------------------------------------------------------------------
    def _open_stream(self, messages: list[dict], params: GenerationParams) -> OpenAIStream:
        request = self.request_of(messages, params)
        submitted_at = time.monotonic()
        deadline, backoff = submitted_at + self.rate_limit_window_s, 1.0
        while True:
            try:
                response = self.client.chat.completions.create(**request)
                break
            except openai.RateLimitError as err:
                wait = min(retry_after(err.response) or backoff, MAX_RATE_LIMIT_WAIT_S)
                backoff = min(backoff * 2, MAX_RATE_LIMIT_WAIT_S)
                if time.monotonic() + wait > deadline:
                    log.warning("the backend at %s is still rate-limiting (HTTP 429); giving up", self.url)
                    raise BackendRefused("Sorry, the model's server is too busy right now (rate limited). "
                                         "Please ask again in a minute.") from None
                log.info("the backend at %s is rate-limiting (HTTP 429): trying again in %.1f s", self.url, wait)
                if self._stopped.wait(wait):
                    raise BackendUnavailable("the worker is stopping") from None
            except openai.APIStatusError as err:
                raise self.refusal(err, params) from None
            except (openai.APIError, OSError) as err:  # no answer: timeout, connection refused or dropped
                raise self.unavailable(err, during=False) from None
        stream = OpenAIStream(self, response, submitted_at)
        with self._lock:
            self._open.add(stream)
            self._max_open = max(self._max_open, len(self._open))
        return stream

    def refusal(self, err: openai.APIStatusError, params: GenerationParams) -> Exception:
        """The exception an HTTP error status becomes (see the module's docstring)."""
        status, message = err.status_code, server_message(err)
        if status in (401, 403):
            log.error("the backend at %s refused our key (HTTP %d): check XWINBOT_BACKEND_KEY", self.url, status)
            return BackendRefused(f"Sorry, the model's server refused this bot's key (HTTP {status}); the operator "
                                  "needs to check XWINBOT_BACKEND_KEY.")
        if status == 404:
            log.error("the backend at %s has no model %r (HTTP 404: %s)", self.url, self.model, message)
            return BackendRefused(f"Sorry, the model's server has no model `{self.model}` (HTTP 404); the operator "
                                  "needs to check XWINBOT_BACKEND_MODEL and XWINBOT_BACKEND_URL (ending in /v1).")
        if status in (400, 413, 422) and any(word in message.lower() for word in CONTEXT_WORDS):
            return BackendPromptTooLong(message, params.max_new_tokens)
        if status >= 500:
            return self.unavailable(err, during=False)
        log.warning("the backend at %s refused the request (HTTP %d: %s)", self.url, status, message)
        return BackendRefused(f"Sorry, the model's server refused this request (HTTP {status}: {message}).")

    def unavailable(self, err: BaseException, during: bool) -> BackendUnavailable:
        """What a failure to answer becomes: one line saying what happened (no traceback, no key)."""
        if isinstance(err, openai.APITimeoutError) or "timeout" in type(err).__name__.lower():
            why = "it was silent too long"
        elif isinstance(err, openai.APIStatusError):
            why = f"HTTP {err.status_code}"
        else:
            why = "the connection failed" if during else "no connection"
        what = ("the model's server stopped in the middle of the answer" if during
                else "the model's server did not answer")
        log.warning("the backend at %s: %s (%s: %s)", self.url, what, type(err).__name__, why)
        return BackendUnavailable(f"{what} ({why})")

    def _tokens(self, n: int) -> None:
        with self._lock:
            self._tokens_total += n

    def _forget(self, stream: OpenAIStream) -> None:
        with self._lock:
            self._open.discard(stream)


def retry_after(response) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``: seconds or an HTTP date), if it did."""
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def server_message(err: openai.APIStatusError) -> str:
    """The error's own message (``{"error": {"message": …}}``, or FastAPI's ``{"detail": …}``), short."""
    body = err.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or (body.get("error") or {}).get("message")
        if message:
            return str(message)[:300]
    return str(err.message)[:300]
