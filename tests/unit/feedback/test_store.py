"""worker/feedback/store.py on real Redis: what a 👍/👎 keeps, replacing and counting clicks, reasons, the
newest-first listing and the retention."""

from __future__ import annotations

import time

import pytest

from tests.unit.feedback.helpers import answered
from worker.feedback.store import FeedbackStore
from worker.queue.keys import RedisKeys


@pytest.fixture
def keys(queue_name) -> RedisKeys:
    return RedisKeys(queue_name)


@pytest.fixture
def store(redis, keys) -> FeedbackStore:
    return FeedbackStore(redis, keys, retention_days=90)


def test_a_rating_keeps_the_question_and_the_answer_with_its_model_and_template(redis, keys, store):
    job = answered(redis, keys, "What is the capital of France?", "Paris.", model="xwin-13b", template="vicuna")
    stored = store.rate(job, "slack", "U1", "good")
    assert store.get(stored.rating_id) == stored
    assert (stored.job_id, stored.platform, stored.user_id, stored.rating) == (job.job_id, "slack", "U1", "good")
    assert (stored.question, stored.answer) == ("What is the capital of France?", "Paris.")
    assert (stored.model, stored.template, stored.reason) == ("xwin-13b", "vicuna", None)


def test_an_answer_whose_record_expired_is_rated_without_it(redis, keys, store):
    stored = store.rate(answered(redis, keys, "Old question", None), "discord", "42", "bad")
    assert stored.question == "Old question" and stored.answer is None and stored.model is None


def test_clicking_again_replaces_the_rating_and_the_same_click_counts_once(redis, keys, store):
    job = answered(redis, keys, "q", "a")
    store.rate(job, "slack", "U1", "good")
    store.rate(job, "slack", "U1", "good")  # the same button twice
    assert store.counts() == {("slack", "good"): 1}
    store.rate(job, "slack", "U1", "bad")  # changed their mind: one rating, now bad, counted under bad
    assert [r.rating for r in store.newest()] == ["bad"]
    assert store.counts() == {("slack", "good"): 1, ("slack", "bad"): 1}
    store.rate(job, "discord", "U1", "bad")  # another platform's user of the same id is someone else
    assert len(list(store.newest())) == 2
    assert store.counts()[("discord", "bad")] == 1


def test_a_reason_is_added_to_the_rating_and_kept_only_while_the_rating_stays(redis, keys, store):
    job = answered(redis, keys, "q", "a")
    assert store.add_reason(job.job_id, "slack", "U1", "too vague") is None  # no rating to add it to
    store.rate(job, "slack", "U1", "bad")
    with_reason = store.add_reason(job.job_id, "slack", "U1", "  too vague \n")
    assert with_reason.reason == "too vague" and with_reason.rating == "bad"
    assert store.rate(job, "slack", "U1", "bad").reason == "too vague"  # the same 👎 again keeps it
    assert store.rate(job, "slack", "U1", "good").reason is None  # a 👍 drops the 👎's reason
    assert store.add_reason(job.job_id, "slack", "U1", "late") is None  # a modal submitted after the 👍: dropped
    assert store.rate(job, "slack", "U1", "bad").reason is None  # and it does not come back
    assert store.counts() == {("slack", "bad"): 2, ("slack", "good"): 1}  # reasons are not ratings


def test_a_rating_is_one_of_good_or_bad(redis, keys, store):
    with pytest.raises(ValueError, match="good"):
        store.rate(answered(redis, keys, "q", "a"), "slack", "U1", "meh")


def test_newest_first_optionally_only_good_or_bad_and_limited(redis, keys, store):
    now = time.time()
    for age, (text, rating) in enumerate([("fourth", "good"), ("third", "bad"), ("second", "good"),
                                          ("first", "bad")]):
        store.rate(answered(redis, keys, text, f"answer to {text}"), "slack", f"U{age}", rating, now=now - age * 60)
    assert [r.question for r in store.newest()] == ["fourth", "third", "second", "first"]
    assert [r.question for r in store.newest(rating="bad")] == ["third", "first"]
    assert [r.question for r in store.newest(limit=2, rating="good")] == ["fourth", "second"]
    assert [r.question for r in store.newest(limit=1)] == ["fourth"]


def test_a_rating_older_than_the_retention_is_no_longer_listed(redis, keys):
    store = FeedbackStore(redis, keys, retention_days=1)
    now = time.time()
    store.rate(answered(redis, keys, "recent", "a"), "slack", "U1", "good", now=now - 3600)
    store.rate(answered(redis, keys, "too old", "a"), "slack", "U2", "bad", now=now - 2 * 24 * 3600)
    assert [r.question for r in store.newest()] == ["recent"]
    assert store.counts() == {("slack", "good"): 1, ("slack", "bad"): 1}  # a counter: every rating given, ever


def test_ratings_are_forgotten_once_the_retention_has_passed(redis, keys):
    store = FeedbackStore(redis, keys, retention_days=1 / 86400)  # a second
    stored = store.rate(answered(redis, keys, "q", "a"), "slack", "U1", "good")
    assert [r.question for r in store.newest()] == ["q"]
    time.sleep(2.1)
    assert list(store.newest()) == [] and store.get(stored.rating_id) is None  # listing and the rating itself
