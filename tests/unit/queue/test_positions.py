"""A job marked started on the real Redis: once only, and never while a queue-position notice is being shown
(the notice would overwrite the answer's first words)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from worker.queue.keys import RedisKeys
from worker.queue.positions import mark_started, show_unless_started


@pytest.fixture
def keys(redis):
    keys = RedisKeys(namespace=f"test-{uuid.uuid4().hex[:12]}")
    yield keys
    for key in redis.scan_iter(match=f"{keys.namespace}:*"):
        redis.delete(key)


def test_a_job_is_marked_started_once(redis, keys):
    assert mark_started(redis, keys, "slack-C1-1", 60) is True
    assert mark_started(redis, keys, "slack-C1-1", 60) is False  # a retry after a crash: it began before
    assert mark_started(redis, keys, "slack-C1-2", 60) is True
    assert 0 < redis.ttl(keys.started("slack-C1-1")) <= 60


def test_no_position_notice_is_shown_once_the_answer_started(redis, keys):
    mark_started(redis, keys, "slack-C1-1", 60)
    shown = []
    assert show_unless_started(redis, keys, "slack-C1-1", lambda: shown.append("#2 in queue")) is False
    assert shown == []


def test_the_answer_waits_for_a_position_notice_being_shown(redis, keys):
    """A notice that began before the answer finishes first, and the answer starts only then."""
    events, notice_showing = [], threading.Event()

    def slow_notice():
        notice_showing.set()
        time.sleep(0.3)
        events.append("notice shown")

    notice = threading.Thread(target=show_unless_started, args=(redis, keys, "slack-C1-1", slow_notice))
    notice.start()
    assert notice_showing.wait(5)
    assert mark_started(redis, keys, "slack-C1-1", 60) is True
    events.append("answer started")
    notice.join(5)
    assert events == ["notice shown", "answer started"]
    assert mark_started(redis, keys, "slack-C1-1", 60) is False
