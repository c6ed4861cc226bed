"""Files as context, end to end on Slack: a mention with a CSV and a photo → the job carries the CSV's text →
the worker on the demo model answers in the thread, and the answer ends by saying the photo was skipped."""

from __future__ import annotations

import pytest

from tests.fakes.fake_slack import FakeSlackFiles
from tests.helpers.redis_server import drop_queue
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN, connected_app, slack_settings, unique
from tests.system.test_slack_e2e import answer_of, job_turns
from worker.queue.keys import RedisKeys
from worker.queue.reply_index import ReplyIndex
from worker.serve import WorkerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake():
    with FakeSlackFiles(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def settings(fake, redis, demo_dir):
    name = unique("files-e2e-").lower()
    yield slack_settings(fake, name, model=str(demo_dir), device="cpu", temperature=0.0, max_new_tokens=40,
                         max_context_tokens=1024, max_batch=2, update_interval_s=0.3)
    drop_queue(redis, name)


def test_a_mention_with_files_is_answered_with_them_and_the_skipped_one_is_named(fake, redis, settings):
    channel = unique("C")
    files = [fake.file_object("sales.csv", b"region,units\nnorth,120\nsouth,80\n", "text/csv", "csv"),
             fake.file_object("team.png", b"\x89PNG\r\n\x1a\n", "image/png", "png")]
    keys = RedisKeys.for_settings(settings)
    worker = WorkerProcess(settings, redis)
    worker.start()
    try:
        with connected_app(fake, settings, redis):
            shared = fake.share_file(channel, "U1", "", b"", files=files,
                                     text=f"<@{fake.bot_user_id}> Which region sold more units?")
            event = {**shared, "type": "app_mention"}
            event.pop("subtype")
            fake.send_event(event)
            reply = answer_of(fake, redis, keys, channel, event["ts"], timeout=120)
    finally:
        worker.stop()
    job_id = ReplyIndex(redis, keys).job_id_for_message("slack", channel, reply["ts"])
    job = ReplyIndex(redis, keys).job(job_id)
    assert [a.name for a in job.attachments] == ["sales.csv"] and "north,120" in job.attachments[0].text
    assert job_turns(redis, job_id)[-1]["text"] == "Which region sold more units?"
    answer = reply.get("text") or reply.get("markdown_text", "")
    assert answer.rstrip().endswith("`team.png` was skipped: images are not read (only text, code, CSV, JSON, logs "
                                    "and PDFs)._"), answer
    assert len(answer) > len("team.png was skipped") + 20  # an answer came before the note
