"""Load: 500 questions from 50 people in one burst, through the real Slack adapter and the real worker (both as
subprocesses, so their memory is their own) to a fake Slack. Both caps answer "busy"; every accepted question
is answered exactly once; every one of the 500 gets exactly one visible reply; memory stays bounded."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from tests.fakes.fake_slack import FakeSlack
from tests.helpers.processes import kill, memory_mb, settings_env, spawn
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN, bot_replies, mention
from worker.queue.job_queue import SERIALIZER
from worker.queue.keys import RedisKeys

pytestmark = [pytest.mark.slow, pytest.mark.long]

USERS, PER_USER = 50, 10
CHANNELS = 5
PER_USER_CAP, QUEUE_CAP = 3, 120  # the burst fills 120 places: 20 people reach 3, then the queue is full
USER_BUSY = ":hourglass: You already have 3 questions waiting"
GLOBAL_BUSY = ":hourglass: I'm answering a lot of questions right now"
DRAIN_TIMEOUT_S = 240  # the burst drains in ~50 s here: a missing reply fails the test within minutes
WORKER_PEAK_MB, ADAPTER_PEAK_MB = 2000, 300  # generous: about 870 and 62 MB measured here
QUESTIONS = ["What is the capital of France?", "Name a colour.", "What is 2 + 2?", "Say hello."]


class PeakMemory:
    """Samples the processes' resident memory while the burst runs (VmHWM also keeps the peak)."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.5):
        self.pids, self.every_s = pids, every_s
        self.peak = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self):
        for name, pid in self.pids.items():
            try:
                self.peak[name] = max(self.peak[name], memory_mb(pid)["peak"])
            except (FileNotFoundError, KeyError):
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.sample()


def job_status(redis: Redis, job_id: str):
    try:
        return RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).get_status()
    except NoSuchJobError:
        return None


def reply_kind(text: str) -> str:
    if text.startswith(USER_BUSY):
        return "user busy"
    if text.startswith(GLOBAL_BUSY):
        return "global busy"
    if text.startswith("_thinking") or text.startswith(":warning:") or text.startswith(":hourglass:"):
        return text[:60]
    return "answer"


@pytest.fixture
def fake():
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as server:
        yield server


def test_burst_of_500_questions_from_50_people(fake, demo_dir, redis, queue_name):
    env = settings_env(
        slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_api_url=fake.api_url, queue_name=queue_name,
        model=demo_dir, device="cpu", temperature=0.0, max_new_tokens=6, max_context_tokens=1024, max_batch=8,
        per_user_jobs=PER_USER_CAP, queued_jobs=QUEUE_CAP, update_interval_s=1.0, position_interval_s=2.0,
        metrics_port=0, heartbeat_s=5, maintenance_interval_s=10,
    )
    worker = spawn(["worker"], env)
    adapter = spawn(["slack"], env)
    try:
        fake.wait_connected(timeout=120)
        questions = []  # (channel, ts, job id)
        keys = RedisKeys(queue_name)
        with PeakMemory({"worker": worker.pid, "slack adapter": adapter.pid}) as memory:
            started = time.monotonic()
            for round_ in range(PER_USER):
                for user in range(USERS):
                    channel = f"CLOAD{user % CHANNELS}"
                    event = mention(fake, channel, QUESTIONS[(user + round_) % len(QUESTIONS)], user=f"U{user:03d}")
                    fake.send_event(event)
                    questions.append((channel, event["ts"], keys.job_id("slack", f"{channel}-{event['ts']}")))
            sent_in = time.monotonic() - started

            def every_question_has_its_reply():
                return all(bot_replies(fake, channel, ts) for channel, ts, _ in questions)

            fake.wait_for(every_question_has_its_reply, timeout=DRAIN_TIMEOUT_S)

            def accepted():
                return [(c, ts, j) for c, ts, j in questions
                        if not bot_replies(fake, c, ts)[0]["text"].startswith(":hourglass:")]

            def every_accepted_job_finished():
                return all(job_status(redis, job_id) in (JobStatus.FINISHED, JobStatus.FAILED)
                           for _, _, job_id in accepted())

            fake.wait_for(every_accepted_job_finished, timeout=DRAIN_TIMEOUT_S)
            drained_in = time.monotonic() - started
        time.sleep(1.5)  # a late edit or a second message would show up now
        replies = {(c, ts): bot_replies(fake, c, ts) for c, ts, _ in questions}
        kinds = Counter(reply_kind(r[0]["text"]) for r in replies.values() if len(r) == 1)
        statuses = Counter(RQJob.fetch(j, connection=redis, serializer=SERIALIZER).return_value()["status"]
                           for c, ts, j in accepted())
        left = sorted(k.decode() for k in redis.scan_iter(match=f"*{queue_name}*"))
        print(f"\n500 questions sent in {sent_in:.2f} s, all answered or refused in {drained_in:.1f} s; replies: "
              f"{dict(kinds)}; job results: {dict(statuses)}; peak memory (MB): "
              f"{ {k: round(v) for k, v in memory.peak.items()} }; Redis keys of the queue left: {len(left)} "
              f"{sorted(Counter(k.split(':')[-2] if k.count(':') > 1 else k for k in left).items())}")
        assert [key for key, r in replies.items() if len(r) != 1] == []  # one visible reply per question
        assert set(kinds) == {"answer", "user busy", "global busy"}, kinds
        assert sum(kinds.values()) == USERS * PER_USER
        assert statuses == {"answered": kinds["answer"]}
        for channel, ts, _ in accepted():  # once the answer began, no "thinking…" notice came back over it
            history = fake.history_of(channel, replies[(channel, ts)][0]["ts"])
            answering = [i for i, text in enumerate(history) if not text.startswith("_thinking")]
            assert answering and not any(text.startswith("_thinking") for text in history[answering[0]:])
        assert memory.peak["worker"] < WORKER_PEAK_MB and memory.peak["slack adapter"] < ADAPTER_PEAK_MB
        assert adapter.poll() is None and worker.poll() is None
    finally:
        kill(adapter)
        kill(worker)
