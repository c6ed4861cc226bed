"""worker/queue/keys.py: one namespace for every key, the default deployment's keys and job ids unchanged."""

from __future__ import annotations

import re

import pytest

from worker.queue.job import job_id_for
from worker.queue.keys import DEFAULT_NAMESPACE, RedisKeys
from worker.queue.redis_connection import as_text
from worker.settings import Settings


def every_key(keys: RedisKeys) -> dict[str, str]:
    """One key of each kind."""
    return {
        "dedupe": keys.dedupe("slack-C1-1"), "active": keys.active("slack:U1"), "cancel": keys.cancel("slack-C1-1"),
        "delivered": keys.delivered("slack-C1-1"), "started": keys.started("slack-C1-1"),
        "placeholder_lock": keys.placeholder_lock("slack-C1-1"), "announcer": keys.announcer(),
        "announced": keys.announced("slack-C1-1"), "indexed_job": keys.indexed_job("slack-C1-1"),
        "message": keys.message("slack", "C1", "1.5"), "thread": keys.thread("discord", "7", "8"),
        "seen": keys.seen("slack-event", "Ev1"), "reply_stream": keys.reply_stream("console-ab"),
        "reply_parts": keys.reply_parts("slack", "slack-C1-1"), "discord_dm": keys.discord_dm("discord-ask-9"),
        "answer": keys.answer("slack-C1-1"), "feedback": keys.feedback("slack-C1-1:slack:U1"),
        "feedback_times": keys.feedback_times(), "feedback_counts": keys.feedback_counts(),
        "worker_info": keys.worker_info(), "workers_loading": keys.workers_loading(),
    }


# The names a running default deployment already has in its Redis: they must not move.
DEFAULT_NAMES = {
    "dedupe": "xwinbot:dedupe:slack-C1-1", "active": "xwinbot:active:slack:U1", "cancel": "xwinbot:cancel:slack-C1-1",
    "delivered": "xwinbot:delivered:slack-C1-1", "started": "xwinbot:started:slack-C1-1",
    "placeholder_lock": "xwinbot:placeholder-lock:slack-C1-1", "announcer": "xwinbot:announcer",
    "announced": "xwinbot:announced:slack-C1-1", "indexed_job": "xwinbot:job:slack-C1-1",
    "message": "xwinbot:message:slack:C1:1.5", "thread": "xwinbot:thread:discord:7:8",
    "seen": "xwinbot:seen:slack-event:Ev1", "reply_stream": "xwinbot:reply:console-ab",
    "reply_parts": "xwinbot:slack:parts:slack-C1-1", "discord_dm": "xwinbot:discord:dm:discord-ask-9",
    "answer": "xwinbot:answer:slack-C1-1", "feedback": "xwinbot:feedback:slack-C1-1:slack:U1",
    "feedback_times": "xwinbot:feedback-times", "feedback_counts": "xwinbot:feedback-counts",
    "worker_info": "xwinbot:worker-info", "workers_loading": "xwinbot:workers-loading",
}


def test_the_namespace_is_the_queue_name_setting_and_defaults_to_xwinbot(monkeypatch):
    assert DEFAULT_NAMESPACE == "xwinbot" == Settings().queue_name
    monkeypatch.setenv("XWINBOT_QUEUE_NAME", "staging")
    assert RedisKeys.for_settings(Settings()) == RedisKeys("staging")


def test_the_default_deployment_keeps_every_key_name():
    assert every_key(RedisKeys()) == DEFAULT_NAMES


def test_another_deployment_has_every_key_under_its_own_name():
    staging = every_key(RedisKeys("staging"))
    assert all(key.startswith("staging:") for key in staging.values()), staging
    assert {kind: key.removeprefix("staging:") for kind, key in staging.items()} == \
        {kind: key.removeprefix("xwinbot:") for kind, key in DEFAULT_NAMES.items()}


def test_each_kind_of_key_is_distinct():
    keys = every_key(RedisKeys())
    assert len(set(keys.values())) == len(keys)


def test_default_job_ids_are_unchanged_and_others_carry_the_namespace():
    for platform, source in [("slack", "C1-1700000000.000100"), ("discord", "ask-123"), ("console", "ab" * 16),
                             ("slack", "x" * 300)]:
        plain = job_id_for(platform, source)
        assert RedisKeys().job_id(platform, source) == plain
        staging, production = RedisKeys("staging").job_id(platform, source), RedisKeys("prod").job_id(platform, source)
        assert staging != plain and production != plain and staging != production
        assert staging.startswith("staging-") and production.startswith("prod-")
        for job_id in (plain, staging, production):
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,100}", job_id), job_id
    assert RedisKeys("staging").job_id("discord", "ask-123") == "staging-discord-ask-123"
    assert RedisKeys("staging").job_id("discord", "ask-123") == RedisKeys("staging").job_id("discord", "ask-123")


def test_namespaces_that_look_alike_as_ids_still_get_different_job_ids():
    dotted, dashed = RedisKeys("team.a").job_id("slack", "C1-1"), RedisKeys("team-a").job_id("slack", "C1-1")
    assert dotted != dashed and re.fullmatch(r"[A-Za-z0-9_-]+", dotted)
    long_name = "n" * 150
    assert len(RedisKeys(long_name).job_id("slack", "C1-1")) <= 100
    assert RedisKeys(long_name).job_id("slack", "C1-1") != RedisKeys(long_name + "x").job_id("slack", "C1-1")
    with pytest.raises(ValueError):
        job_id_for("slack", "C1-1", namespace="")


def test_redis_replies_as_text():
    assert as_text(b"slack-C1-1") == "slack-C1-1" == as_text("slack-C1-1")
    assert as_text(None) is None
