"""xwinbot_feedback_total on a real /metrics: Redis's counts, whichever process serves it; a Redis that is away
leaves the rest of /metrics answering."""

from __future__ import annotations

import pytest

from tests.helpers.redis_server import free_port
from tests.unit.feedback.helpers import answered
from tests.unit.ops.test_metrics import get, samples, value
from worker.feedback.store import FeedbackStore
from worker.ops.health_server import start_health_server
from worker.queue.keys import RedisKeys
from worker.settings import Settings


@pytest.mark.parametrize("process", ["worker", "slack", "discord"])
def test_every_process_exports_the_ratings_given(redis, queue_name, process):
    keys = RedisKeys(queue_name)
    store = FeedbackStore(redis, keys)
    first, second = answered(redis, keys, "q1", "a1"), answered(redis, keys, "q2", "a2")
    store.rate(first, "slack", "U1", "bad")
    store.rate(first, "slack", "U1", "bad")  # the same click again
    store.rate(second, "slack", "U2", "bad")
    store.rate(second, "discord", "7", "good")
    server = start_health_server(Settings(queue_name=queue_name, metrics_port=free_port(),
                                          metrics_host="127.0.0.1"), process)
    try:
        assert value(server.port, "xwinbot_feedback_total", platform="slack", rating="bad") == 2
        assert value(server.port, "xwinbot_feedback_total", platform="discord", rating="good") == 1
        assert value(server.port, "xwinbot_feedback_total", platform="slack", rating="good") is None
        store.rate(first, "slack", "U1", "good")  # read at every scrape
        assert value(server.port, "xwinbot_feedback_total", platform="slack", rating="good") == 1
    finally:
        server.stop()


def test_metrics_still_answer_while_redis_is_away():
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", metrics_port=free_port(),
                        metrics_host="127.0.0.1")
    server = start_health_server(settings, "slack")
    try:
        status, body = get(server.port, "/metrics")
        assert status == 200 and "xwinbot_feedback" not in body
        assert value(server.port, "xwinbot_redis_up") == 0
        assert samples(server.port)  # the process's own metrics are there
    finally:
        server.stop()
