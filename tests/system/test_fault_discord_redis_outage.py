"""The Discord adapter rides out a Redis outage: the gateway keeps heartbeating, questions asked meanwhile are
acknowledged at once and answered once Redis is back.

Real parts: our discord.py bot against the fake gateway (heartbeat interval shortened, so a loop blocked for
more than a moment shows as a gap), a private redis-server stopped for 40 s (longer than the clients'
``XWINBOT_REDIS_RETRY_S``, so a call really gives up and is retried), and the worker on the demo model, started
once Redis is back.
"""

from __future__ import annotations

import time
import uuid

import pytest

from bot.discord.questions import WAITING_FOR_QUEUE
from tests.fakes.fake_discord import FakeDiscord
from tests.helpers.discord_helpers import bot_messages, discord_settings, running_bot
from tests.helpers.fault_helpers import finished
from tests.helpers.redis_server import RedisServer
from worker.posters.status_text import is_status_text
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import redis_from_settings
from worker.queue.reply_index import ReplyIndex
from worker.serve import WorkerProcess

HEARTBEAT_S = 1.0
# A heartbeat may come this much late on a busy 2-core machine without the loop being blocked (one CI run saw 0.52 s,
# while the worker decoded on the same cores); a loop blocked by a Redis command would stall for that command's
# whole outage wait (redis_retry_s, 30 s by default).
SLACK_S = 1.0
OUTAGE_S = 40


def bot_texts_everywhere(fake) -> list[str]:
    """What the bot shows in the channel and every thread."""
    places = [fake.channel_id] + [t["id"] for t in fake.threads()]
    return [m["content"] for place in places for m in bot_messages(fake, place)]


@pytest.mark.slow
@pytest.mark.long
def test_questions_asked_while_redis_is_down_are_answered_after_it_and_the_gateway_holds(demo_dir, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    with FakeDiscord(heartbeat_interval_ms=int(HEARTBEAT_S * 1000)) as fake:
        settings = discord_settings(fake, f"discord-outage-{uuid.uuid4().hex[:8]}", redis_url=server.url,
                                    model=str(demo_dir), device="cpu", temperature=0.0, max_new_tokens=12,
                                    max_context_tokens=512, update_interval_s=0.3)
        redis, keys = redis_from_settings(settings), RedisKeys.for_settings(settings)
        try:
            with running_bot(fake, settings, redis):
                fake.wait_ready()
                server.stop()
                stopped_at = time.time()
                ask = fake.slash_command("ask", {"prompt": "What is the capital of France?"}, user_id=4001)
                mention = fake.user_message(fake.channel_id, 4002, "What is 2 + 2?", mentions_bot=True)
                fake.wait_for(lambda: bot_texts_everywhere(fake).count(WAITING_FOR_QUEUE) == 2, 15,
                              "both questions acknowledged as waiting for the queue")
                acknowledged_s = time.time() - stopped_at
                time.sleep(max(0.0, stopped_at + OUTAGE_S - time.time()))
                server.start()
                back_at = time.time()
                jobs = [keys.job_id("discord", f"ask-{ask['id']}"), keys.job_id("discord", f"msg-{mention['id']}")]
                fake.wait_for(lambda: all(redis.exists(f"rq:job:{j}") for j in jobs), 30, "both questions queued")
                queued_s = time.time() - back_at
                worker = WorkerProcess(settings, redis, serve_health=False)
                worker.start()
                try:
                    fake.wait_for(lambda: all(finished(redis, j) for j in jobs), 180, "both answers")
                finally:
                    worker.stop()
                heartbeats = [t for t in fake.heartbeat_times() if t >= stopped_at - HEARTBEAT_S]
                logins = fake.logins()
            index = ReplyIndex(redis, keys)
            for job_id in jobs:
                thread = index.job(job_id).reply_to.thread_id
                shown = [m["content"] for m in bot_messages(fake, thread)]
                assert len(shown) == 1 and not is_status_text(shown[0]), (job_id, shown)  # answered, once
            gaps = [b - a for a, b in zip(heartbeats, heartbeats[1:], strict=False)]
            assert heartbeats[-1] > back_at and max(gaps) <= HEARTBEAT_S + SLACK_S, max(gaps)
            assert logins == [2], "the gateway connection was lost and made again"
            print(f"\nacknowledged {acknowledged_s:.1f} s after Redis stopped, queued {queued_s:.1f} s after it was "
                  f"back; {len(heartbeats)} heartbeats, longest gap {max(gaps):.2f} s (interval {HEARTBEAT_S} s)")
        finally:
            server.stop()
