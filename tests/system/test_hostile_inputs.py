"""Hostile input (tests/data/hostile_inputs.yaml) through the real Slack and Discord adapters to the real worker on
the demo model: every case gets the reply it should (an answer, a clear refusal, or nothing for a payload that
names no one), no bot message can ping, no secret shows, and afterwards everything still answers.

All cases are sent at once and answered concurrently. The cases marked ``fast`` run by default; the whole
corpus runs with --run-long."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field

import pytest
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.discord_helpers import running_bot, sends_with_content
from tests.helpers.hostile import SLACK_PINGS, cases, substitute
from tests.helpers.redis_server import drop_queue
from tests.helpers.slack_helpers import connected_app, mention
from worker.posters.status_text import is_status_text
from worker.queue.job_queue import SERIALIZER
from worker.queue.keys import RedisKeys
from worker.serve import WorkerProcess
from worker.settings import Settings

pytestmark = pytest.mark.slow

CORPUS = cases(None)  # the injection/privacy section runs in test_injection_privacy.py
SLACK_BOT_TOKEN = "xoxb-hostile-" + uuid.uuid4().hex
SLACK_APP_TOKEN = "xapp-hostile-" + uuid.uuid4().hex
SLACK_SIGNING_SECRET = "signing-hostile-" + uuid.uuid4().hex
DISCORD_TOKEN = "discord-hostile-" + uuid.uuid4().hex
SECRETS = (SLACK_BOT_TOKEN, SLACK_APP_TOKEN, SLACK_SIGNING_SECRET, DISCORD_TOKEN)
QUESTION_SHOWN = re.compile(r"<@\d+> asked: ", re.DOTALL)  # /ask shows the question; the reply is in its thread
ANSWER_TIMEOUT_S = 240
NORMAL_QUESTION = "What is the capital of France?"


def test_the_corpus_is_well_formed():
    ids = [case["id"] for case in CORPUS]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    for case in CORPUS:
        assert case["platform"] in ("slack", "discord") and case["expect"] in ("answer", "refusal", "nothing")
        assert case["via"] in {"slack": ("mention", "event"),
                               "discord": ("ask", "mention", "gateway")}[case["platform"]]
        assert case["expect"] != "refusal" or case.get("phrase"), case["id"]


def text_of(case: dict, values: dict) -> str:
    return substitute(case.get("text", ""), values) + case.get("repeat", "") * case.get("times", 0)


@dataclass
class Sent:
    """One case as sent: where its replies appear and the job that answers it (if any)."""

    case: dict
    channel: str
    thread: str | None = None  # Slack: the thread's ts
    job_id: str | None = None
    extra: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def slack():
    with FakeSlack(bot_token=SLACK_BOT_TOKEN, app_token=SLACK_APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def discord():
    with FakeDiscord(bot_token=DISCORD_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def settings(slack, discord, redis, demo_dir):
    name = f"hostile-{uuid.uuid4().hex[:10]}"
    yield Settings(
        slack_bot_token=SLACK_BOT_TOKEN, slack_app_token=SLACK_APP_TOKEN, slack_signing_secret=SLACK_SIGNING_SECRET,
        slack_api_url=slack.api_url, discord_token=DISCORD_TOKEN, discord_api_url=discord.api_base,
        discord_dev_guild_id=discord.guild_id, queue_name=name, model=str(demo_dir), device="cpu", temperature=0.0,
        max_new_tokens=8, max_context_tokens=1024, max_batch=8, update_interval_s=0.3, position_interval_s=1.0,
        per_user_jobs=100, metrics_port=0,
    )
    drop_queue(redis, name)


@pytest.fixture(scope="module")
def product(slack, discord, settings, redis):
    """The worker, the Slack app and the Discord bot, all real, wired to the fakes."""
    worker = WorkerProcess(settings, redis)
    worker.start()
    try:
        with connected_app(slack, settings, redis), running_bot(discord, settings, redis) as bot:
            yield bot
    finally:
        worker.stop()


# -- sending ---------------------------------------------------------------------------------------------------
def send_slack(slack, keys: RedisKeys, case: dict, number: int) -> Sent:
    channel = f"CH{uuid.uuid4().hex[:8].upper()}{number:03d}"
    if case["via"] == "mention":
        event = mention(slack, channel, text_of(case, {}), user=f"UH{number:03d}")
        slack.send_event(event)
        return Sent(case, channel, event["ts"], keys.job_id("slack", f"{channel}-{event['ts']}"))
    ts = slack.add_user_message(channel, f"UH{number:03d}", "(a message for the payload to point at)")
    slack.send_event(substitute(case["payload"], {"channel": channel, "user": f"UH{number:03d}", "ts": ts,
                                                  "bot": slack.bot_user_id}))
    return Sent(case, channel, ts)


def send_discord(discord, keys: RedisKeys, case: dict, number: int) -> Sent:
    channel = discord.add_channel(f"hostile-{number}")
    values = {"channel": channel, "guild": discord.guild_id, "bot": discord.bot_user_id}
    if case["via"] == "ask":
        options = substitute(case["options"], values) if "options" in case else {"prompt": text_of(case, values)}
        interaction = discord.slash_command("ask", options, channel_id=channel)
        return Sent(case, str(channel), job_id=keys.job_id("discord", f"ask-{interaction['id']}"),
                    extra={"interaction": interaction["id"]})
    if case["via"] == "mention":
        message = discord.user_message(channel, 4001, text_of(case, values), mentions_bot=True)
        return Sent(case, str(channel), job_id=keys.job_id("discord", f"msg-{message['id']}"))
    discord.dispatch(case["event"], substitute(case["payload"], {**values, "id": discord._next_id()}))
    return Sent(case, str(channel))


# -- what people see -------------------------------------------------------------------------------------------
def slack_replies(slack, sent: Sent) -> list[str]:
    """Texts of the bot's messages for a case: in its thread (a mention), anywhere in its channel (a payload)."""
    messages = (slack.thread(sent.channel, sent.thread) if sent.case["via"] == "mention"
                else slack.messages(sent.channel))
    return [m["text"] for m in messages if m.get("bot_id") == slack.bot_id] + [
        str(c.args.get("text")) for c in slack.calls_to("chat.postEphemeral") if c.args.get("channel") == sent.channel]


def discord_replies(discord, sent: Sent) -> list[str]:
    """The bot's messages in the case's channel and the threads started there (private ones included)."""
    channels = [sent.channel] + [t["id"] for t in discord.threads() if str(t.get("parent_id")) == sent.channel]
    return [m["content"] for ch in channels for m in discord.messages(ch)
            if int(m["author"]["id"]) == discord.bot_user_id and not QUESTION_SHOWN.match(m["content"])]


def job_done(redis: Redis, job_id: str | None) -> bool:
    try:
        return RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).get_status() in (
            JobStatus.FINISHED, JobStatus.FAILED)
    except NoSuchJobError:
        return False


def settled(sent: Sent, replies: list[str], redis: Redis) -> bool:
    expect = sent.case["expect"]
    if expect == "refusal":
        return any(sent.case["phrase"] in text for text in replies)
    if expect == "answer":
        return job_done(redis, sent.job_id) or any(text.startswith((":warning:", "⚠️")) for text in replies)
    return True


def check(sent: Sent, replies: list[str]) -> str | None:
    """None when the person saw what the case expects, else what went wrong."""
    case = sent.case
    if case["expect"] == "nothing":
        return None if not replies else f"expected no reply, got {replies}"
    if case["expect"] == "refusal":
        if len(replies) != 1 or case["phrase"] not in replies[0]:
            return f"expected one reply containing {case['phrase']!r}, got {replies}"
        return None
    if len(replies) != 1 or not replies[0].strip() or is_status_text(replies[0]):
        return f"expected one answer, got {replies}"
    return None


def run_cases(cases: list[dict], slack, discord, redis, keys: RedisKeys) -> None:
    started = time.monotonic()
    sent = [send_slack(slack, keys, case, i) if case["platform"] == "slack" else send_discord(discord, keys, case, i)
            for i, case in enumerate(cases)]

    def replies_of(item: Sent) -> list[str]:
        return slack_replies(slack, item) if item.case["platform"] == "slack" else discord_replies(discord, item)

    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline and not all(settled(item, replies_of(item), redis) for item in sent):
        time.sleep(0.2)
    time.sleep(2)  # anything late (a second reply, a reply to a payload that should get none) shows up now
    problems = {item.case["id"]: problem for item in sent if (problem := check(item, replies_of(item)))}
    print(f"\n{len(cases)} hostile inputs answered in {time.monotonic() - started:.1f} s")
    for case_id, problem in problems.items():
        print(f"{case_id}: {problem[:300]}")
    assert problems == {}


def assert_nothing_pinged_or_leaked(slack, discord) -> None:
    slack_texts = [str(c.args.get("text") or "") + str(c.args.get("blocks") or "") for c in slack.calls
                   if c.method in ("chat.postMessage", "chat.update", "chat.postEphemeral")]
    assert slack_texts and [t for t in slack_texts if SLACK_PINGS.search(t)] == []
    sends = sends_with_content(discord)
    assert sends
    for request in sends:
        body = request.json.get("data", request.json)
        assert body.get("allowed_mentions") == {"parse": []}, (request.method, request.path, body)
    for text in slack_texts + [str(r.json) for r in sends]:
        assert not any(secret in text for secret in SECRETS)


def assert_still_answering(slack, discord, redis, keys: RedisKeys) -> None:
    channel = f"CHAFTER{uuid.uuid4().hex[:8].upper()}"
    event = mention(slack, channel, NORMAL_QUESTION)
    slack.send_event(event)
    interaction = discord.slash_command("ask", {"prompt": NORMAL_QUESTION})
    for job_id in (keys.job_id("slack", f"{channel}-{event['ts']}"),
                   keys.job_id("discord", f"ask-{interaction['id']}")):
        discord.wait_for(lambda job_id=job_id: job_done(redis, job_id), timeout=120)
    assert any("Paris" in m["text"] for m in slack.thread(channel, event["ts"]) if m.get("bot_id"))
    assert any("Paris" in m["content"] for t in discord.threads() for m in discord.messages(t["id"])
               if int(m["author"]["id"]) == discord.bot_user_id)


def test_fast_hostile_inputs(product, settings, slack, discord, redis):
    keys = RedisKeys.for_settings(settings)
    run_cases([case for case in CORPUS if case.get("fast")], slack, discord, redis, keys)
    assert_nothing_pinged_or_leaked(slack, discord)
    assert_still_answering(slack, discord, redis, keys)


@pytest.mark.long
def test_whole_hostile_corpus(product, settings, slack, discord, redis):
    keys = RedisKeys.for_settings(settings)
    run_cases(CORPUS, slack, discord, redis, keys)
    assert_nothing_pinged_or_leaked(slack, discord)
    assert_still_answering(slack, discord, redis, keys)
