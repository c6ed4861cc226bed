"""`xwinbot api` with clients nobody here wrote: the official `openai` package and raw HTTP (http.client), against a
real uvicorn server on a loopback port, real Redis and (the slow ones) a real worker on the demo model."""

from __future__ import annotations

import http.client
import json
import socket
import time

import openai
import pytest
from rq.job import JobStatus

from bot.api.app import start_in_thread
from worker.queue.job_queue import job_queue
from worker.settings import Settings

KEY = "sk-test-0123456789"
MODEL = "xwinbot"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_settings(queue_name: str, demo_dir=None, **extra) -> Settings:
    model = dict(model=str(demo_dir), device="cpu", temperature=0.0, max_context_tokens=1024, max_batch=4,
                 heartbeat_s=2, maintenance_interval_s=3, update_interval_s=0.2) if demo_dir else {}
    return Settings(_env_file=None, queue_name=queue_name, api_keys=f"ci:{KEY},other:sk-other", api_port=free_port(),
                    max_new_tokens=40, **model, **extra)


@pytest.fixture
def serve(redis):
    stoppers = []

    def start(settings: Settings) -> str:
        stoppers.append(start_in_thread(settings, redis))
        return f"http://127.0.0.1:{settings.api_port}"

    yield start
    for stop in stoppers:
        stop()


def client(base: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def raw(base: str, body: bytes | str, content_type: str = "application/json", key: str = KEY,
        path: str = "/v1/chat/completions"):
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null"), dict(response.getheaders())


# -- without a worker ------------------------------------------------------------------------------------------

def test_wrong_or_missing_key_is_401(serve, queue_name):
    base = serve(api_settings(queue_name))
    with pytest.raises(openai.AuthenticationError) as caught:
        client(base, "sk-wrong").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 401
    assert "sk-wrong" not in str(caught.value.body)
    status, body, _ = raw(base, "{}", key="")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_models_and_healthz(serve, queue_name):
    base = serve(api_settings(queue_name))
    assert [m.id for m in client(base).models.list()] == [MODEL]  # no worker, no model setting: the alias
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {"status": "ok", "redis": True, "workers": 0}


def test_unknown_model_is_404(serve, queue_name):
    base = serve(api_settings(queue_name))
    with pytest.raises(openai.NotFoundError) as caught:
        client(base).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, content_type, param", [
    (b"{not json", "application/json", None),
    (json.dumps({"model": MODEL, "messages": MESSAGES}), "text/plain", None),
    (b"[1, 2]", "application/json", None),
    (b"\xff\xfe", "application/json", None),
    (json.dumps({"model": MODEL}), "application/json", "messages"),
    (json.dumps({"model": MODEL, "messages": []}), "application/json", "messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}]}), "application/json",
     "messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 100_001}]}), "application/json",
     "messages[0].content"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
     "application/json", "messages[0].content[0]"),
    (json.dumps({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}), "application/json",
     "messages[0].role"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "temperature": 3}), "application/json", "temperature"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "temperature": "hot"}), "application/json", "temperature"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "top_p": 0}), "application/json", "top_p"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}), "application/json", "max_tokens"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 5000}), "application/json",
     "max_completion_tokens"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "n": 2}), "application/json", "n"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "tools": [{"type": "function"}]}), "application/json", "tools"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "response_format": {"type": "json_object"}}),
     "application/json", "response_format"),
    (json.dumps({"model": MODEL, "messages": MESSAGES, "frobnicate": 1}), "application/json", "frobnicate"),
])
def test_malformed_bodies_are_400_in_openai_shape(serve, queue_name, redis, body, content_type, param, capfd):
    base = serve(api_settings(queue_name))
    status, answer, _ = raw(base, body, content_type)
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert job_queue(api_settings(queue_name), redis).depth() == 0  # nothing was queued
    assert "Traceback" not in capfd.readouterr().err


def test_over_the_cap_is_429_with_retry_after(serve, queue_name, redis):
    settings = api_settings(queue_name, per_user_jobs=1)
    base = serve(settings)
    raw_client = client(base).with_options(timeout=2)
    with pytest.raises(openai.APITimeoutError):  # no worker: the first question waits in the queue
        raw_client.chat.completions.create(model=MODEL, messages=MESSAGES)
    # the client gave up: its job is cancelled; keep one queued with a streaming call held open instead
    with client(base).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        with pytest.raises(openai.RateLimitError) as caught:
            client(base).chat.completions.create(model=MODEL, messages=MESSAGES)
        assert caught.value.response.headers["retry-after"] == "5"
    assert job_queue(settings, redis).depth() <= 1


def test_a_client_that_leaves_cancels_its_queued_job(serve, queue_name, redis):
    settings = api_settings(queue_name)
    base = serve(settings)
    queue = job_queue(settings, redis)
    with client(base).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        next(iter(stream))
        job_ids = [j.decode() for j in redis.lrange(queue.rq.key, 0, -1)]
        assert len(job_ids) == 1
    wait_for(lambda: queue.rq.fetch_job(job_ids[0]).get_status() == JobStatus.CANCELED)
    assert queue.depth() == 0


def wait_for(condition, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- with a worker on the demo model ---------------------------------------------------------------------------

@pytest.fixture
def worker_api(demo_dir, queue_name, redis, serve):
    from worker.serve import WorkerProcess

    settings = api_settings(queue_name, demo_dir)
    process = WorkerProcess(settings, redis)
    process.start()
    yield serve(settings), settings, process
    process.stop()


@pytest.mark.slow
def test_openai_client_gets_the_demo_models_answer(worker_api, redis):
    base, settings, _ = worker_api
    models = [m.id for m in client(base).models.list()]
    assert models == [settings.model.rstrip("/").rsplit("/", 1)[-1]]
    question = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"}]
    completion = client(base).chat.completions.create(model=models[0], messages=question, max_tokens=20)
    answer = completion.choices[0].message.content
    assert "Paris" in answer
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    pieces, usage = [], None
    stream = client(base).chat.completions.create(model=MODEL, messages=question, max_tokens=20, stream=True,
                                                  stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    assert "".join(pieces) == answer  # greedy: the same answer, streamed
    assert usage.completion_tokens == completion.usage.completion_tokens


@pytest.mark.slow
def test_a_client_that_leaves_cancels_its_running_job(worker_api, redis):
    base, settings, _ = worker_api
    queue = job_queue(settings, redis)
    long = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]
    with client(base).chat.completions.create(model=MODEL, messages=long, max_tokens=400, stream=True) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # the answer is running
        job_id = [k.decode().rsplit(":", 1)[1] for k in redis.scan_iter(f"{queue_name_of(settings)}:reply:*")][0]
    wait_for(lambda: redis.exists(queue.keys.cancel(job_id))
             or queue.rq.fetch_job(job_id).get_status() in (JobStatus.CANCELED, JobStatus.FINISHED))
    wait_for(lambda: (queue.rq.fetch_job(job_id).return_value() or {}).get("status") == "cancelled", 60)


def queue_name_of(settings: Settings) -> str:
    return settings.queue_name
