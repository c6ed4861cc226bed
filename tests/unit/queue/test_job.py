"""The job schema: JSON round trip, every kind of bad input rejected with a readable reason, deterministic ids."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from worker.queue.job import (
    MAX_TEXT_CHARS,
    GenerationOverrides,
    Job,
    JobRejected,
    JobTurn,
    ReplyTarget,
    Requester,
    job_id_for,
)


def make_job(**changes) -> Job:
    fields = dict(
        job_id="slack-Ev123",
        turns=[JobTurn(role="user", text="Hi"), JobTurn(role="assistant", text="Hello!"),
               JobTurn(role="user", text="What is 2+2? ✓ 日本")],
        requester=Requester(platform="slack", user_id="U1", display_name="Ada"),
        reply_to=ReplyTarget(platform="slack", channel_id="C1", thread_id="1700000000.1234", placeholder_id="17.5"),
        overrides=GenerationOverrides(temperature=0.7, max_new_tokens=64),
    )
    return Job(**{**fields, **changes})


def valid_dict() -> dict:
    return json.loads(make_job().to_json())


def rejected(raw: str | bytes) -> str:
    with pytest.raises(JobRejected) as info:
        Job.from_json(raw)
    message = str(info.value)
    assert message.startswith("invalid job: ") and len(message) < 300 and "\n" not in message
    return message


def test_round_trip():
    job = make_job()
    text = job.to_json()
    assert json.loads(text)["schema_version"] == 1
    assert Job.from_json(text) == job
    assert Job.from_json(text.encode("utf-8")) == job


def test_defaults_and_frozen():
    job = Job(job_id="x", turns=[JobTurn(role="user", text="q")], requester=Requester(platform="console", user_id="me"),
              reply_to=ReplyTarget(platform="console"))
    assert job.created_at > 1.6e9 and job.overrides == GenerationOverrides()
    with pytest.raises(ValidationError, match="Instance is frozen"):
        job.job_id = "y"


def test_bad_json():
    assert "not valid JSON" in rejected('{"job_id": ')
    assert "not valid JSON" in rejected("")


def test_invalid_utf8_bytes():
    assert "UTF-8" in rejected(b"\xff\xfe")


def test_lone_surrogate():
    raw = make_job().to_json().replace("What is 2+2?", "\\ud800")
    assert "not valid JSON" in rejected(raw)
    with pytest.raises(ValueError, match="lone surrogate"):  # built in Python rather than parsed
        JobTurn(role="user", text="a\ud800b")


def _set_last_text(text):
    def mutate(data):
        data["turns"][-1]["text"] = text
    return mutate


def _drop_last_turn(data):
    data["turns"] = data["turns"][:2]


@pytest.mark.parametrize("mutate, expected", [
    (_set_last_text("a\x00b"), "NUL"),
    (lambda data: data.update(schema_version=2), "schema_version"),
    (lambda data: data.pop("reply_to"), "reply_to: Field required"),
    (_set_last_text("  \n "), "the last message is empty"),
    (_drop_last_turn, "the last message must be the user's"),
], ids=["nul-character", "wrong-schema-version", "missing-reply-to", "empty-last-message", "last-turn-from-assistant"])
def test_one_bad_field_is_named(mutate, expected):
    data = valid_dict()
    mutate(data)
    assert expected in rejected(json.dumps(data))


def test_no_turns_and_too_many_turns():
    data = valid_dict()
    data["turns"] = []
    assert "turns" in rejected(json.dumps(data))
    data["turns"] = [{"role": "user", "text": "q"}] * 201
    assert "turns" in rejected(json.dumps(data))


def test_bad_job_id_chars():
    for bad in ["a b", "a:b", "", "x" * 101, "ünï"]:
        data = valid_dict()
        data["job_id"] = bad
        assert "job_id" in rejected(json.dumps(data))


def test_huge_text():
    data = valid_dict()
    data["turns"][-1]["text"] = "x" * (MAX_TEXT_CHARS + 1)
    message = rejected(json.dumps(data))
    assert "turns.2.text" in message and "100000" in message and "xxxx" not in message


def test_wrong_types():
    data = valid_dict()
    data["turns"] = "hello"
    assert "turns" in rejected(json.dumps(data))
    data = valid_dict()
    data["requester"]["platform"] = "irc"
    assert "requester.platform" in rejected(json.dumps(data))
    assert "object" in rejected("[1, 2]")


def test_extra_unknown_field():
    data = valid_dict()
    data["priority"] = "high"
    assert "priority: Extra inputs are not permitted" in rejected(json.dumps(data))
    data = valid_dict()
    data["reply_to"]["webhook"] = "http://evil"
    assert "reply_to.webhook" in rejected(json.dumps(data))


def test_out_of_range_overrides():
    data = valid_dict()
    data["overrides"]["temperature"] = 9
    assert "overrides.temperature" in rejected(json.dumps(data))
    data["overrides"] = {"max_new_tokens": 0}
    assert "overrides.max_new_tokens" in rejected(json.dumps(data))


def test_not_text_input():
    with pytest.raises(JobRejected):
        Job.from_json(None)  # type: ignore[arg-type]


def test_job_id_for_is_deterministic_and_rq_safe():
    sources = ["Ev0123ABC", "1700000000.123456", "1234567890123456789", "a b/c:d", "日本語", "x" * 500, "-", "a\ud800"]
    for platform in ["slack", "discord", "console"]:
        ids = [job_id_for(platform, s) for s in sources]
        assert ids == [job_id_for(platform, s) for s in sources]
        assert len(set(ids)) == len(ids)
        for job_id in ids:
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,100}", job_id), job_id
            make_job(job_id=job_id)  # accepted by the schema
    assert job_id_for("discord", "123") == "discord-123"
    assert job_id_for("slack", "1.5") != job_id_for("slack", "1-5")
    assert job_id_for("slack", "Ev1") != job_id_for("discord", "Ev1")
    with pytest.raises(ValueError):
        job_id_for("slack", "")
