"""The Slack inbox's recovery against real Redis and the fake Slack: one replica takes an entry, a dead one's
entry is taken once its lease lapses, and an event Slack's Web API keeps refusing is given up after its age."""

from __future__ import annotations

import uuid

import pytest
from slack_sdk import WebClient

from bot.slack.inbox import LEASE_S, Inbox
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.redis_server import drop_queue
from worker.queue.keys import RedisKeys


@pytest.fixture(scope="module")
def fake():
    with FakeSlack() as server:
        yield server


@pytest.fixture
def keys(redis):
    keys = RedisKeys(f"inbox-{uuid.uuid4().hex[:8]}")
    yield keys
    drop_queue(redis, keys.namespace)


def replica(redis, keys, fake, handled: list, clock=None, give_up_s: float = 60.0) -> Inbox:
    inbox = Inbox(redis, keys, WebClient(token=fake.bot_token, base_url=fake.api_url), give_up_s=give_up_s,
                  **({"clock": clock} if clock else {}))
    inbox.listener("app_mention", lambda event, client, context: handled.append((event["ts"], context)))
    return inbox


def body(event_id: str) -> dict:
    return {"type": "event_callback", "event_id": event_id,
            "event": {"type": "app_mention", "ts": "1.000001", "channel": "C1", "user": "U1", "text": "hi"}}


def test_a_dead_adapters_entry_is_taken_by_one_replica_once_its_lease_lapses(redis, keys, fake):
    now = [1000.0]
    handled: list = []
    dead, first, second = (replica(redis, keys, fake, handled, clock=lambda: now[0]) for _ in range(3))
    assert dead.record("Ev1", body("Ev1")) and not first.record("Ev1", body("Ev1"))  # a redelivery is dropped
    now[0] += 10  # long past its grace; the dead adapter's lease still holds
    assert first.recover_due() == 0 and second.recover_due() == 0
    redis.delete(keys.slack_inbox_lease("Ev1"))  # what LEASE_S seconds without renewal do
    assert first.recover_due() + second.recover_due() == 1
    assert len(handled) == 1 and handled[0][1]["bot_user_id"] == fake.bot_user_id
    assert not redis.hlen(keys.slack_inbox()) and not redis.zcard(keys.slack_inbox_due())
    assert LEASE_S < 30  # a restarted adapter takes over within seconds


def test_an_event_slack_keeps_refusing_is_retried_with_backoff_then_given_up(redis, keys, fake, caplog):
    now = [1000.0]
    inbox = replica(redis, keys, fake, [], clock=lambda: now[0], give_up_s=60.0)

    def down(event, client, context):
        raise ConnectionResetError("Slack's Web API is down")

    inbox.listener("app_mention", down)
    inbox.record("Ev2", body("Ev2"))
    inbox.handle(body("Ev2"), lambda: down(None, None, None))  # the listener's own try, as bolt runs it
    due = [redis.zscore(keys.slack_inbox_due(), "Ev2") - now[0]]
    for _ in range(4):  # the last try is 80 s after the event came: past its 60 s
        now[0] += 20
        assert inbox.recover_due() == 1 or not redis.hlen(keys.slack_inbox())
        score = redis.zscore(keys.slack_inbox_due(), "Ev2")
        due.append(None if score is None else score - now[0])
    assert all(0 < wait <= 10 for wait in due[:2])  # jittered backoff, capped at 10 s
    assert due[-1] is None and "giving up on Slack event Ev2" in caplog.text
