"""``xwinbot api``: the Starlette app (served by uvicorn) behind the OpenAI-compatible endpoints.

A chat completion is a job like any chat question: it is enqueued with the key's name as the requester (the
per-user cap is per key; the global cap is the queue's), its replies come through the console poster's per-job
Redis stream (``bot.console.read_reply``) as the whole text so far, and the text new in each entry is sent as an
SSE ``chat.completion.chunk`` (or the final text as one ``chat.completion``). ``usage`` comes from the job's
result. A client that goes away before the answer ends gets its job cancelled (queued: removed; running: the
worker stops at its next cancel poll).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

import anyio
from redis import Redis
from redis.exceptions import RedisError
from rq.job import JobStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bot.api.keys import ApiKeys
from bot.api.request import ApiError, ChatRequest, parse_chat_request
from bot.console import GIVEN_UP, cancel_quietly, read_reply, waiting_for
from worker.queue.job import Job, ReplyTarget, Requester
from worker.queue.job_queue import Busy, JobQueue, job_queue
from worker.queue.redis_connection import redis_from_settings
from worker.settings import Settings

log = logging.getLogger(__name__)

ALIAS = "xwinbot"  # a model name every deployment accepts, whatever it serves
RETRY_AFTER_S = {"user": 5, "global": 10}  # what a 429 tells the client to wait, by which cap was reached
RESULT_WAIT_S = 5.0  # the job's result is written just after its final reply; wait this long for it at most
THREADS = 512  # blocking Redis reads in flight (one per streaming answer): far above anyio's default of 40


class AnswerFailed(Exception):
    def __init__(self, message: str, status: int = 500, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


class Api:
    """What every request needs: settings, Redis, the queue and the keys."""

    def __init__(self, settings: Settings, redis: Redis):
        self.settings, self.redis = settings, redis
        self.queue: JobQueue = job_queue(settings, redis)
        self.keys = ApiKeys(settings.api_keys)
        self.limiter = anyio.CapacityLimiter(THREADS)

    async def blocking(self, call: Callable, *args, abandon: bool = False):
        return await anyio.to_thread.run_sync(call, *args, limiter=self.limiter, abandon_on_cancel=abandon)

    def requester(self, request: Request) -> str:
        name = self.keys.name_for(request.headers.get("authorization"))
        if name is None:
            given = "authorization" in request.headers
            raise ApiError(401, "Incorrect API key provided." if given else "You didn't provide an API key: send "
                           "Authorization: Bearer <key> (a key of XWINBOT_API_KEYS).", code="invalid_api_key")
        return name

    def models(self) -> list[str]:
        """The served model's id: what the workers publish (a local directory by its name), else the settings'."""
        found = set()
        for raw in self.redis.hvals(self.queue.keys.worker_info()):
            try:
                model = json.loads(raw).get("model")
            except (ValueError, AttributeError):
                continue
            if model:
                found.add(model_id(model))
        if not found:
            found.add(model_id(self.settings.model) if self.settings.model else ALIAS)
        return sorted(found)

    def check_model(self, name: str) -> None:
        served = self.models()
        if name not in {*served, ALIAS} and model_id(name) not in served:
            raise ApiError(404, f"The model `{name[:200]}` does not exist: this server serves "
                           f"{', '.join(served)} (or `{ALIAS}`).", param="model", code="model_not_found")


def model_id(model: str) -> str:
    """A Hugging Face repo id as it is; a local directory by its last part (clients need not know the path)."""
    if model.startswith(("/", ".", "~")) or os.sep in model.replace("/", "") or os.path.isdir(model):
        return os.path.basename(os.path.normpath(os.path.expanduser(model))) or model
    return model


def create_app(settings: Settings, redis: Redis | None = None) -> Starlette:
    api = Api(settings, redis if redis is not None else redis_from_settings(settings))

    async def healthz(request: Request) -> JSONResponse:
        try:
            workers = await api.blocking(api.queue.workers)
        except RedisError:
            return JSONResponse({"status": "redis unreachable", "redis": False, "workers": None}, status_code=503)
        return JSONResponse({"status": "ok", "redis": True, "workers": workers})

    async def models(request: Request) -> JSONResponse:
        api.requester(request)
        names = await api.blocking(api.models)
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "xwinbot"} for name in names]})

    async def chat_completions(request: Request):
        who = api.requester(request)
        chat = parse_chat_request(await request.body(), request.headers.get("content-type"))
        await api.blocking(api.check_model, chat.model)
        job = api_job(api.queue, who, chat)
        try:
            await api.blocking(api.queue.enqueue, job)
        except Busy as err:
            raise ApiError(429, err.message, kind="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(RETRY_AFTER_S[err.reason])}) from None
        log.info("api: job %s for key %s (stream=%s)", job.job_id, who, chat.stream)
        return JobResponse(api, job, chat)

    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(err.status_code, str(err.detail), code=None).body(),
                            status_code=err.status_code, headers=getattr(err, "headers", None))

    async def redis_error(request: Request, err: RedisError) -> JSONResponse:
        log.warning("api: Redis unreachable: %s", err)
        body = ApiError(503, "the queue (Redis) is unreachable; try again shortly", kind="server_error").body()
        return JSONResponse(body, status_code=503, headers={"Retry-After": "10"})

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], exception_handlers={ApiError: api_error, HTTPException: http_error, RedisError: redis_error})


def api_job(queue: JobQueue, who: str, chat: ChatRequest) -> Job:
    try:
        return Job(job_id=queue.keys.job_id("api", uuid.uuid4().hex), turns=chat.turns,
                   requester=Requester(platform="api", user_id=who),
                   reply_to=ReplyTarget(platform="api", channel_id="http"),
                   overrides=chat.overrides, system_prompt=chat.system_prompt)
    except ValueError as err:  # pydantic's ValidationError: a bound of the job schema
        raise ApiError(400, f"the request does not fit in a job: {str(err).splitlines()[-1][:300]}") from None


class JobResponse:
    """An ASGI response that streams (or waits for) one job's answer and cancels the job if the client leaves."""

    def __init__(self, api: Api, job: Job, chat: ChatRequest):
        self.api, self.job, self.chat = api, job, chat
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.ended = False  # the job's answer ended (or failed): nothing to cancel

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as group:
            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()  # the client left: stop answering (the finally below cancels the job)

            group.start_soon(watch)
            try:
                await (self._stream(send) if self.chat.stream else self._whole(send))
            except OSError:  # the connection broke while sending
                pass
            finally:
                if not self.ended:
                    with anyio.CancelScope(shield=True):
                        log.info("api: client left; cancelling job %s", self.job.job_id)
                        await self.api.blocking(cancel_quietly, self.api.queue, self.job.job_id)
                group.cancel_scope.cancel()

    async def _texts(self) -> AsyncIterator[tuple[str, bool]]:
        """(the answer's text so far, final?) as the worker posts it; AnswerFailed if it never comes."""
        api, job_id = self.api, self.job.job_id
        reader = read_reply(api.redis, api.queue.keys, job_id, timeout_s=None,
                            idle=lambda: waiting_for(api.queue, job_id))
        given_up = None
        while (entry := await api.blocking(next, reader, None, abandon=True)) is not None:
            kind, text = entry
            if kind == "idle" and text in GIVEN_UP.values():
                if text == given_up:  # twice, with an empty read between: no last reply was on its way
                    self.ended = True
                    raise AnswerFailed(text)
                given_up = text
            elif kind == "idle":
                given_up = None
            elif kind in ("update", "final"):
                self.ended = kind == "final"
                yield text, kind == "final"
            elif kind == "error":
                self.ended = True
                result = await api.blocking(self._result)
                if result.get("status") == "refused":
                    raise AnswerFailed(text, 400, "context_length_exceeded" if "too long" in text else None)
                raise AnswerFailed(text)

    def _result(self) -> dict:
        """The job's RQ result (written right after its final reply): status, tokens, prompt_tokens."""
        deadline = time.monotonic() + RESULT_WAIT_S
        while True:
            rq_job = self.api.queue.rq.fetch_job(self.job.job_id)
            status = rq_job.get_status(refresh=False) if rq_job else None
            if status == JobStatus.FINISHED:
                return rq_job.return_value() or {}
            if status in (None, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED) \
                    or time.monotonic() > deadline:
                return {}
            time.sleep(0.01)

    def _usage(self, result: dict) -> tuple[dict, str]:
        completion = int(result.get("tokens") or 0)
        prompt = int(result.get("prompt_tokens") or 0)
        limit = self.chat.overrides.max_new_tokens or self.api.settings.max_new_tokens
        finish = "length" if completion >= limit else "stop"
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}, finish

    async def _whole(self, send) -> None:
        final = ""
        try:
            async for text, is_final in self._texts():
                if is_final:
                    final = text
        except AnswerFailed as err:
            kind = "invalid_request_error" if err.status == 400 else "server_error"
            await _send_json(send, err.status, ApiError(err.status, err.message, code=err.code, kind=kind).body())
            return
        usage, finish = self._usage(await self.api.blocking(self._result))
        await _send_json(send, 200, {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.chat.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": final, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        })

    async def _stream(self, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")]})
        await self._event(send, self._chunk({"role": "assistant", "content": ""}))
        sent, rewritten = "", False
        try:
            async for text, is_final in self._texts():
                # Whitespace at the end may still be cut from the final text (it is stripped): hold it back.
                shown = text.strip() if is_final else text.lstrip().rstrip()
                if shown.startswith(sent):
                    if len(shown) > len(sent):
                        await self._event(send, self._chunk({"content": shown[len(sent):]}))
                        sent = shown
                elif not rewritten:  # text already sent cannot be taken back; say so once in the log
                    rewritten = True
                    log.warning("api: job %s rewrote text already streamed", self.job.job_id)
        except AnswerFailed as err:
            kind = "invalid_request_error" if err.status == 400 else "server_error"
            await self._event(send, ApiError(err.status, err.message, code=err.code, kind=kind).body())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        usage, finish = self._usage(await self.api.blocking(self._result))
        await self._event(send, self._chunk({}, finish))
        if self.chat.include_usage:
            await self._event(send, {**self._chunk({}), "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.chat.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    @staticmethod
    async def _event(send, data: dict) -> None:
        body = f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
        await send({"type": "http.response.body", "body": body, "more_body": True})


async def _send_json(send, status: int, body: dict) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw, "more_body": False})


# ---------------------------------------------------------------------------------------------------------------
# Serving


def make_server(settings: Settings, redis: Redis | None = None):
    import uvicorn

    if not ApiKeys(settings.api_keys):
        raise ValueError("set XWINBOT_API_KEYS (comma-separated name:key pairs) to serve the HTTP API")
    config = uvicorn.Config(create_app(settings, redis), host=settings.api_host, port=settings.api_port,
                            log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def run(settings: Settings) -> None:
    """Serve the API until interrupted."""
    server = make_server(settings)
    print(f"xwinbot api: http://{settings.api_host}:{settings.api_port}/v1 "
          f"({len(ApiKeys(settings.api_keys).names)} keys)", flush=True)
    server.run()


def start_in_thread(settings: Settings, redis: Redis | None = None, timeout_s: float = 30) -> Callable[[], None]:
    """The API served by a background thread (``xwinbot up``, tests); returns the function that stops it."""
    server = make_server(settings, redis)
    thread = threading.Thread(target=server.run, name="xwinbot-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP API could not listen on {settings.api_host}:{settings.api_port}")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return stop
