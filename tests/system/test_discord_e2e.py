"""Discord end to end: /ask or a mention in a fake Discord → our discord.py bot → Redis queue → the worker on
the demo model → the Discord poster streams the answer into the thread. Real sockets; marked slow."""

from __future__ import annotations

import json

import pytest
from rq.job import Job as RQJob
from rq.job import JobStatus

from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import (
    bot_messages,
    button_names,
    discord_settings,
    running_bot,
    sends_with_content,
    thread_of,
)
from tests.helpers.redis_server import drop_queue
from worker.queue.job_queue import SERIALIZER
from worker.queue.keys import RedisKeys
from worker.serve import WorkerProcess

pytestmark = pytest.mark.slow
COUNTING = "Count from 1 to 300, one number per line."


@pytest.fixture(scope="module")
def fake():
    with FakeDiscord() as server:
        yield server


@pytest.fixture(scope="module")
def module_redis():
    from redis import Redis

    client = Redis(host="127.0.0.1", port=6379)
    yield client
    client.close()


@pytest.fixture(scope="module")
def settings(fake, module_redis, demo_dir):
    import uuid

    name = f"discord-e2e-{uuid.uuid4().hex[:10]}"
    yield discord_settings(fake, name, model=str(demo_dir), device="cpu", temperature=0.0, max_new_tokens=100,
                           max_context_tokens=1024, max_batch=4, update_interval_s=0.3, position_interval_s=0.5,
                           per_user_jobs=5)
    drop_queue(module_redis, name)


@pytest.fixture(scope="module")
def keys(settings):
    return RedisKeys.for_settings(settings)


@pytest.fixture(scope="module")
def bot(fake, settings, module_redis):
    process = WorkerProcess(settings, module_redis)
    process.start()
    with running_bot(fake, settings, module_redis) as client:
        yield client
    process.stop()


def finished(redis, job_id) -> bool:
    try:
        status = RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).get_status()
    except Exception:
        return False
    return status in (JobStatus.FINISHED, JobStatus.FAILED)


def job_turns(redis, job_id) -> list[tuple[str, str]]:
    raw = json.loads(RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).args[0])
    return [(t["role"], t["text"]) for t in raw["turns"]]


def test_ask_streams_the_answer_into_a_thread(fake, module_redis, keys, bot):
    interaction = fake.slash_command("ask", {"prompt": "What is the capital of France?"})
    job_id = keys.job_id("discord", f"ask-{interaction['id']}")
    fake.wait_for(lambda: finished(module_redis, job_id), timeout=60)
    question = next(m for m in bot_messages(fake, fake.channel_id)
                    if m["content"].endswith("What is the capital of France?"))
    thread = thread_of(fake, question["id"])
    (answer,) = bot_messages(fake, thread["id"])
    assert "Paris" in answer["content"]
    history = fake.history_of(thread["id"], answer["id"])
    streamed = [text for text in history if not text.startswith("thinking")]
    assert len(streamed) >= 2 and streamed[-1] == answer["content"]
    assert button_names(answer) == ["Regenerate", "👍", "👎"]
    assert not bot.errors


def test_mention_and_follow_up_carry_the_thread_history(fake, module_redis, keys, bot):
    first = fake.user_message(fake.channel_id, 4002, "What is the capital of France?", mentions_bot=True)
    fake.wait_for(lambda: finished(module_redis, keys.job_id("discord", f"msg-{first['id']}")), timeout=60)
    thread = thread_of(fake, first["id"])
    (answer,) = bot_messages(fake, thread["id"])
    assert "Paris" in answer["content"]
    follow_up = fake.user_message(thread["id"], 4002, "And what is it famous for?", mentions_bot=True)
    fake.wait_for(lambda: finished(module_redis, keys.job_id("discord", f"msg-{follow_up['id']}")), timeout=60)
    assert job_turns(module_redis, keys.job_id("discord", f"msg-{follow_up['id']}")) == [
        ("user", "What is the capital of France?"),
        ("assistant", answer["content"]),
        ("user", "And what is it famous for?"),
    ]
    assert len(bot_messages(fake, thread["id"])) == 2


def test_private_answer_moves_to_a_direct_message_when_the_interaction_token_expired(fake, module_redis, keys, bot):
    interaction = fake.slash_command("ask", {"prompt": COUNTING, "private": True}, user_id=4001)
    fake.wait_for(lambda: fake.interaction_responses(interaction["id"]))  # deferred (ephemeral)
    fake.expire_interaction(interaction["token"])  # as if the answer ran past the token's 15 minutes
    job_id = keys.job_id("discord", f"ask-{interaction['id']}")
    fake.wait_for(lambda: finished(module_redis, job_id), timeout=60)
    dm = bot_messages(fake, fake.dm_channel(4001))
    assert dm and dm[-1]["content"].startswith("1")  # the whole answer, in a direct message
    assert RQJob.fetch(job_id, connection=module_redis, serializer=SERIALIZER).return_value()["status"] == "answered"
    assert not [m for m in bot_messages(fake, fake.channel_id) if "Count from" in m["content"]]  # stayed private


def test_stop_button_ends_a_running_answer(fake, module_redis, keys, bot):
    interaction = fake.slash_command("ask", {"prompt": COUNTING}, user_id=4001)
    job_id = keys.job_id("discord", f"ask-{interaction['id']}")
    question = fake.wait_for(lambda: next((m for m in bot_messages(fake, fake.channel_id)
                                           if m["content"].endswith(COUNTING)), None))
    thread = fake.wait_for(lambda: thread_of(fake, question["id"]))
    placeholder = fake.wait_for(lambda: next(iter(bot_messages(fake, thread["id"])), None))
    fake.wait_for(lambda: fake.message(placeholder["id"])["content"][:1].isdigit(), timeout=60)
    fake.click(f"xwinbot:stop:{job_id}", placeholder["id"], thread["id"], user_id=4001)
    fake.wait_for(lambda: finished(module_redis, job_id), timeout=30)
    assert fake.message(placeholder["id"])["content"].endswith("(stopped)")


def test_too_long_question_is_told_the_limit(fake, module_redis, keys, bot):
    interaction = fake.slash_command("ask", {"prompt": "Summarise: " + "blah " * 1100})
    job_id = keys.job_id("discord", f"ask-{interaction['id']}")
    fake.wait_for(lambda: finished(module_redis, job_id), timeout=60)
    question = next(m for m in bot_messages(fake, fake.channel_id) if "Summarise" in m["content"])
    (reply,) = bot_messages(fake, thread_of(fake, question["id"])["id"])
    assert reply["content"].startswith("⚠️ Your message is too long") and "the limit is" in reply["content"]


def test_no_message_of_the_whole_flow_can_ping(fake, module_redis, keys, bot):
    interaction = fake.slash_command("ask", {"prompt": "Repeat after me: @everyone @here <@4002> <@&1>"})
    mention = fake.user_message(fake.channel_id, 4002, "Say hello to @here", mentions_bot=True)
    for job_id in (keys.job_id("discord", f"ask-{interaction['id']}"), keys.job_id("discord", f"msg-{mention['id']}")):
        fake.wait_for(lambda job_id=job_id: finished(module_redis, job_id), timeout=60)
    sends = sends_with_content(fake)
    worker_edits = [r for r in sends if r.method == "PATCH" and r.path.startswith("/channels/")]
    assert len(sends) > 6 and worker_edits
    for request in sends:
        body = request.json.get("data", request.json)
        assert body.get("allowed_mentions") == {"parse": []}, (request.method, request.path)


def test_a_csv_on_a_mention_goes_to_the_model_and_the_answer_arrives_in_the_thread(fake, module_redis, keys, bot):
    csv = b"city,population\nParis,2102650\nLyon,522250\n"
    channel_before = [m["id"] for m in bot_messages(fake, fake.channel_id)]
    message = fake.user_message_with_files(fake.channel_id, 4002, "Which city in the file is bigger?",
                                           {"cities.csv": (csv, "text/csv"), "photo.png": (b"\x89PNG", "image/png")},
                                           mentions_bot=True)
    job_id = keys.job_id("discord", f"msg-{message['id']}")
    fake.wait_for(lambda: finished(module_redis, job_id), timeout=90)
    raw = json.loads(RQJob.fetch(job_id, connection=module_redis, serializer=SERIALIZER).args[0])
    assert [(a["name"], a["text"]) for a in raw["attachments"]] == [("cities.csv", csv.decode())]
    assert RQJob.fetch(job_id, connection=module_redis, serializer=SERIALIZER).return_value()["status"] == "answered"
    thread = thread_of(fake, message["id"])
    (answer,) = bot_messages(fake, thread["id"])
    assert raw["reply_to"]["thread_id"] == thread["id"] and answer["id"] == raw["reply_to"]["placeholder_id"]
    assert not answer["content"].startswith("thinking")
    last_line = answer["content"].rstrip().splitlines()[-1]  # the skip note ends the answer
    assert last_line.startswith("_`photo.png` was skipped: images are not read") and last_line.endswith("_"), last_line
    assert [m["id"] for m in bot_messages(fake, fake.channel_id)] == channel_before  # nothing outside the thread
    assert not bot.errors
