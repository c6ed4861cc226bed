"""/metrics and /healthz of every process, read over HTTP with real values: a real worker on the demo model, the
real Slack adapter on a fake Slack, real Redis (a private one where a test stops it).

Counters are process-wide, so the adapter tests compare before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bot.access import Allowlist
from bot.console import ask
from bot.discord.questions import DiscordQuestions
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.paths import REPO
from tests.helpers.redis_server import RedisServer, free_port
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN, connected_app, mention, slack_settings, unique
from worker.ops.health_server import start_health_server
from worker.posters.base import DeliveryFailed, deliver
from worker.queue.job_queue import job_queue
from worker.serve import WorkerProcess
from worker.settings import Settings


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def health(port: int) -> tuple[int, dict]:
    status, body = get(port, "/healthz")
    return status, json.loads(body)


def samples(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics: (name, labels) -> value."""
    status, body = get(port, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(port: int, name: str, **labels) -> float | None:
    return samples(port).get((name, frozenset(labels.items())))


def test_port_zero_serves_nothing_and_a_taken_port_does_not_stop_the_process():
    assert start_health_server(Settings(metrics_port=0), "slack") is None
    first = start_health_server(Settings(metrics_port=free_port(), metrics_host="127.0.0.1"), "slack")
    try:
        taken = Settings(metrics_port=first.port, metrics_host="127.0.0.1")
        assert start_health_server(taken, "discord") is None  # logged; the adapter would go on answering
        assert get(first.port, "/nothing")[0] == 404
    finally:
        first.stop()
    with pytest.raises(OSError):
        get(first.port, "/healthz")  # stopped: nothing listens any more


def test_posting_retries_and_failures_are_counted_by_what(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    before = REGISTRY.get_sample_value("xwinbot_posting_retries_total", {"what": "test note"}) or 0
    flaky = iter([ConnectionError("down"), ConnectionError("down"), None])

    def call():
        if error := next(flaky):
            raise error

    deliver(call, what="test note")
    with pytest.raises(DeliveryFailed):
        deliver(lambda: 1 / 0, attempts=2, what="test note")
    assert REGISTRY.get_sample_value("xwinbot_posting_retries_total", {"what": "test note"}) == before + 3
    assert REGISTRY.get_sample_value("xwinbot_posting_failures_total", {"what": "test note"}) >= 1


@pytest.fixture(scope="module")
def fake():
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


def test_slack_adapter_counts_questions_enqueued_busy_and_refused(fake, redis, queue_name):
    settings = slack_settings(fake, queue_name, per_user_jobs=1, slack_allowed_users="U1",
                              metrics_port=free_port(), metrics_host="127.0.0.1")
    server = start_health_server(settings, "slack")
    try:
        assert health(server.port) == (200, {"status": "ok", "process": "slack", "redis": True})
        names = ["xwinbot_questions_received_total", "xwinbot_jobs_enqueued_total", "xwinbot_allowlist_refusals_total"]
        before = {name: value(server.port, name, platform="slack") or 0 for name in names}
        busy_before = value(server.port, "xwinbot_busy_refusals_total", platform="slack", reason="user") or 0
        channel = unique("C")
        with connected_app(fake, settings, redis):
            fake.send_event(mention(fake, channel, "first"))
            fake.wait_for(lambda: job_queue(settings, redis).depth() == 1)
            fake.send_event(mention(fake, channel, "second, while the first waits"))  # per_user_jobs=1: busy
            fake.send_event(mention(fake, channel, "may I?", user="U9"))  # not on the allowlist
            fake.wait_for(lambda: (value(server.port, "xwinbot_busy_refusals_total", platform="slack",
                                         reason="user") or 0) > busy_before
                          and value(server.port, "xwinbot_allowlist_refusals_total", platform="slack")
                          > before["xwinbot_allowlist_refusals_total"])
        after = {name: value(server.port, name, platform="slack") for name in names}
        assert after["xwinbot_questions_received_total"] == before["xwinbot_questions_received_total"] + 3
        assert after["xwinbot_jobs_enqueued_total"] == before["xwinbot_jobs_enqueued_total"] + 1
        assert after["xwinbot_allowlist_refusals_total"] == before["xwinbot_allowlist_refusals_total"] + 1
        assert value(server.port, "xwinbot_queue_depth", queue=queue_name) == 1
        assert value(server.port, "xwinbot_redis_up") == 1
    finally:
        server.stop()


def test_discord_questions_are_counted_where_the_allowlist_is_checked(redis, queue_name):
    questions = DiscordQuestions(job_queue(Settings(queue_name=queue_name), redis), redis, Allowlist.of(users=["1"]))
    received = REGISTRY.get_sample_value("xwinbot_questions_received_total", {"platform": "discord"}) or 0
    refused = REGISTRY.get_sample_value("xwinbot_allowlist_refusals_total", {"platform": "discord"}) or 0
    assert questions.count_and_check(SimpleNamespace(id=1, roles=[]), None, None) is None
    assert questions.count_and_check(SimpleNamespace(id=2, roles=[]), None, None)
    assert REGISTRY.get_sample_value("xwinbot_questions_received_total", {"platform": "discord"}) == received + 2
    assert REGISTRY.get_sample_value("xwinbot_allowlist_refusals_total", {"platform": "discord"}) == refused + 1


def demo_settings(demo_dir, queue_name: str, redis_url: str, metrics_port: int) -> Settings:
    return Settings(model=str(demo_dir), queue_name=queue_name, redis_url=redis_url, device="cpu", temperature=0.0,
                    max_new_tokens=40, max_context_tokens=1024, max_batch=4, heartbeat_s=2,
                    maintenance_interval_s=3, update_interval_s=0.3, metrics_port=metrics_port,
                    metrics_host="127.0.0.1")


@pytest.mark.slow
def test_worker_serves_real_metrics_and_health_and_503_while_redis_is_down(demo_dir, tmp_path):
    with RedisServer(tmp_path / "redis") as redis_server:
        redis = redis_server.client()
        settings = demo_settings(demo_dir, "metrics-test", redis_server.url, free_port())
        process = WorkerProcess(settings, redis)
        process.start()
        try:
            port = process.health_server.port
            answer = "".join(text for kind, text in ask(redis, job_queue(settings, redis),
                                                        [("user", "What is the capital of France?")], timeout_s=120)
                             if kind == "text")
            assert "Paris" in answer
            answered = ("xwinbot_jobs_total", frozenset({("outcome", "answered")}))
            deadline = time.monotonic() + 10  # the reply shows a moment before the job returns its outcome
            while not (samples(port)[answered] >= 1 and value(port, "xwinbot_jobs_running") == 0):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            metrics = samples(port)
            assert metrics[answered] >= 1
            assert metrics[("xwinbot_time_to_first_token_seconds_count", frozenset())] >= 1
            assert metrics[("xwinbot_time_to_first_token_seconds_sum", frozenset())] > 0
            assert metrics[("xwinbot_tokens_per_second_count", frozenset())] >= 1
            assert metrics[("xwinbot_tokens_per_second_sum", frozenset())] > 0
            assert metrics[("xwinbot_queue_wait_seconds_count", frozenset())] >= 1
            assert metrics[("xwinbot_queue_depth", frozenset({("queue", "metrics-test")}))] == 0
            assert metrics[("xwinbot_workers_alive", frozenset({("queue", "metrics-test")}))] >= 1
            assert metrics[("xwinbot_batch_size_max", frozenset())] >= 1
            assert metrics[("xwinbot_batch_slots", frozenset())] == 4
            assert metrics[("xwinbot_tokens_generated_total", frozenset())] > 1
            assert metrics[("xwinbot_redis_up", frozenset())] == 1
            status, report = health(port)
            assert status == 200 and report["status"] == "ok" and report["process"] == "worker"
            assert report["redis"] is True and report["engine_running"] is True
            assert report["model"] == str(demo_dir) and report["device"] == "cpu" and report["jobs_running"] == 0

            redis_server.stop()  # Redis is down: unhealthy, and /metrics still answers
            status, report = health(port)
            assert status == 503 and report["status"] == "unhealthy" and report["redis"] is False
            assert report["engine_running"] is True
            assert value(port, "xwinbot_redis_up") == 0

            redis_server.start()  # back (the append-only file keeps the queue): healthy again
            assert health(port)[0] == 200
        finally:
            process.stop()
        with pytest.raises(OSError):
            get(port, "/healthz")  # the worker stopped its endpoint with it


@pytest.mark.slow
def test_up_serves_one_endpoint_for_the_whole_process(demo_dir, tmp_path):
    redis_port, metrics_port = free_port(), free_port()
    settings = demo_settings(demo_dir, "xwinbot", f"redis://127.0.0.1:{redis_port}/0", metrics_port)
    env = {**os.environ, "XWINBOT_DATA_DIR": str(tmp_path / "data"),
           **{f"XWINBOT_{name.upper()}": str(v) for name, v in settings.model_dump(exclude_none=True).items()
              if name in {"model", "queue_name", "redis_url", "device", "max_batch", "metrics_port", "metrics_host"}}}
    up = subprocess.Popen([sys.executable, "-m", "worker.cli", "up"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in up.stdout:
            if "ready" in line or time.monotonic() > deadline:
                break
        status, report = health(metrics_port)
        assert status == 200 and report["process"] == "up" and report["engine_running"] is True
        assert value(metrics_port, "xwinbot_batch_slots") == 4
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        with pytest.raises(OSError):
            get(metrics_port, "/healthz")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
