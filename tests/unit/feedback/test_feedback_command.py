"""`xwinbot feedback` through the real entry point on real Redis: the newest ratings first with their question,
answer and reason, --rating, --jsonl for evaluating models, and the clean errors."""

from __future__ import annotations

import json
import time
from dataclasses import fields

import pytest

from tests.helpers.redis_server import free_port
from tests.unit.feedback.helpers import answered
from worker.cli import main
from worker.feedback.store import FeedbackStore, Rating
from worker.queue.keys import RedisKeys

LONG_ANSWER = "\n".join(f"Step {n}: do the next thing." for n in range(1, 11))


@pytest.fixture
def rated(redis, queue_name, monkeypatch) -> FeedbackStore:
    """Three ratings, a minute apart: a 👍 (oldest), a 👎 with a reason, and a 👎 of an answer no longer kept."""
    monkeypatch.setenv("XWINBOT_QUEUE_NAME", queue_name)
    keys = RedisKeys(queue_name)
    store = FeedbackStore(redis, keys)
    now = time.time()
    good = answered(redis, keys, "How do I deploy?", LONG_ANSWER, model="xwin-13b", template="vicuna")
    store.rate(good, "slack", "U1", "good", now=now - 180)
    bad = answered(redis, keys, "What is the capital of Australia?", "Sydney.", model="demo", template="chat")
    store.rate(bad, "discord", "42", "bad", now=now - 120)
    store.add_reason(bad.job_id, "discord", "42", "It is Canberra.")
    store.rate(answered(redis, keys, "An old question", None), "slack", "U2", "bad", now=now - 60)
    return store


def test_lists_the_newest_ratings_first_with_question_answer_and_reason(rated, capsys):
    assert main(["feedback"]) == 0
    out = capsys.readouterr().out
    newest, middle, oldest = (out.index(q) for q in ("An old question", "capital of Australia", "How do I deploy?"))
    assert newest < middle < oldest
    assert "👎 bad  discord user 42" in out and "👍 good  slack user U1" in out
    assert "model: demo  template: chat" in out and "model: xwin-13b  template: vicuna" in out
    assert "reason: It is Canberra." in out and "answer: Sydney." in out
    assert "the answer's record had expired" in out  # the old question's answer was not kept
    assert "Step 4:" in out and "Step 5:" not in out and "… (6 more lines)" in out  # shortened for the terminal


def test_rating_and_limit_choose_what_is_listed(rated, capsys):
    assert main(["feedback", "--rating", "good"]) == 0
    out = capsys.readouterr().out
    assert "How do I deploy?" in out and "capital of Australia" not in out and "An old question" not in out
    assert main(["feedback", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "An old question" in out and "capital of Australia" not in out


def test_jsonl_writes_every_kept_rating_whole_for_evaluating_models(rated, tmp_path, capsys):
    path = tmp_path / "feedback.jsonl"
    assert main(["feedback", "--jsonl", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 3 ratings to {path}"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(set(row) == {f.name for f in fields(Rating)} for row in rows)
    assert [row["question"] for row in rows] == ["An old question", "What is the capital of Australia?",
                                                 "How do I deploy?"]
    assert rows[0]["answer"] is None
    assert rows[1]["rating"] == "bad" and rows[1]["reason"] == "It is Canberra." and rows[1]["answer"] == "Sydney."
    assert rows[1]["model"] == "demo" and rows[1]["template"] == "chat" and rows[1]["platform"] == "discord"
    assert rows[2]["answer"] == LONG_ANSWER  # not shortened


def test_jsonl_to_stdout_holds_only_the_json_lines(rated, capsys):
    assert main(["feedback", "--jsonl", "-", "--rating", "bad"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["rating"] for row in rows] == ["bad", "bad"]
    assert captured.err.strip() == "wrote 2 ratings"


def test_no_feedback_yet_is_said_plainly(redis, queue_name, monkeypatch, capsys):
    monkeypatch.setenv("XWINBOT_QUEUE_NAME", queue_name)
    assert main(["feedback"]) == 0
    assert capsys.readouterr().out.startswith("No feedback yet")
    assert main(["feedback", "--rating", "bad"]) == 0
    assert capsys.readouterr().out.startswith("No 👎 ratings yet")


def test_redis_unreachable_or_an_unwritable_file_is_one_line(rated, monkeypatch, tmp_path, capsys):
    assert main(["feedback", "--jsonl", str(tmp_path / "missing" / "out.jsonl")]) == 1
    assert capsys.readouterr().err.strip() == f"xwinbot: cannot write {tmp_path / 'missing' / 'out.jsonl'}: " \
                                              "No such file or directory"
    monkeypatch.setenv("XWINBOT_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["feedback"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xwinbot feedback: cannot reach Redis") and "Traceback" not in err
