"""Prompt injection and privacy (the ``check: injection`` cases of tests/data/hostile_inputs.yaml) through the real
Slack and Discord adapters, a real worker and real Redis. The worker's model is an OpenAI-compatible server that
repeats the question (tests/fakes/fake_openai.py), so the model's OUTPUT is the hostile text: pings, "post this in
#general", other channels' and people's ids. A decoy channel with a thread holding a secret message is named by
every question. Checked afterwards, for every case at once:

- every message, edit and ephemeral the fakes recorded is in the question's own channel and thread (Slack chat.*,
  Discord messages, interaction responses); nothing opens a DM (``users/@me/channels``);
- every history read (conversations.replies/history, Discord channel messages) names the question's own place;
  the decoy is never read and its secret reaches no job, prompt or message;
- no Settings secret is in any Redis key of the deployment, the jobs, the prompt the worker renders or sends, a
  message, or the log; a direct message's and a private channel's question and answer show in no INFO log line.

Runs in about 15 s (no model is loaded)."""

from __future__ import annotations

import io
import uuid
import zlib
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.discord_helpers import running_bot, sends_with_content
from tests.helpers.hostile import SLACK_PINGS, cases, substitute
from tests.helpers.log_capture import product_log
from tests.helpers.redis_server import RedisServer
from tests.helpers.slack_helpers import connected_app, mention, message
from worker.inference.prompt import ALPACA, VICUNA
from worker.job_context import conversation_of
from worker.queue.job import Job
from worker.queue.job_queue import SERIALIZER
from worker.queue.keys import RedisKeys
from worker.serve import WorkerProcess
from worker.settings import Settings

pytestmark = pytest.mark.slow

CASES = cases("injection")
SECRETS = {  # distinctive values of every secret Settings holds
    "slack_bot_token": "xoxb-9911-privacy-" + uuid.uuid4().hex,
    "slack_app_token": "xapp-1-A9911-privacy-" + uuid.uuid4().hex,
    "slack_signing_secret": "signing-privacy-" + uuid.uuid4().hex,
    "discord_token": "MTk5MTE.privacy." + uuid.uuid4().hex,
    "backend_key": "sk-privacy-" + uuid.uuid4().hex,
    "api_keys": "ci:sk-api-privacy-" + uuid.uuid4().hex,
    "redis_password": "redispw-privacy-" + uuid.uuid4().hex,
}
DECOY_SECRET = "DECOY-SECRET-" + uuid.uuid4().hex  # in the decoy thread only
PRIVATE_VIAS = ("dm", "private", "ask-private")
SYSTEM_PROMPT = "You are the privacy test's assistant."


@dataclass
class Sent:
    """One case as sent: its place (channel, thread), its job and its own marker word."""

    case: dict
    marker: str
    channel: str
    thread: str | None = None
    job_id: str = ""
    interaction: dict = field(default_factory=dict)


@dataclass
class Decoys:
    slack_channel: str
    slack_thread: str
    discord_channel: int
    discord_thread: int
    discord_message: int


def test_the_section_is_well_formed():
    ids = [case["id"] for case in CASES]
    assert len(ids) >= 8 and len(set(ids)) == len(ids)
    vias = {(case["platform"], case["via"]) for case in CASES}
    assert vias == {("slack", v) for v in ("channel", "thread", "dm", "private")} | {
        ("discord", v) for v in ("ask", "ask-private", "thread", "dm")}
    assert all("$marker" in case["text"] for case in CASES)


# -- the product -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def info_log():
    """Every process's log (adapters and worker run in this process) at INFO, as operators run it."""
    with product_log(io.StringIO(), "INFO", "text") as stream:
        yield stream


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    """A Redis of its own with a password, so the password is a secret the run could leak."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        server.client().config_set("requirepass", SECRETS["redis_password"])
        url = f"redis://:{SECRETS['redis_password']}@127.0.0.1:{server.port}/0"
        client = Redis.from_url(url)
        yield url, client
        client.close()


@pytest.fixture(scope="module")
def fakes():
    with (FakeSlack(bot_token=SECRETS["slack_bot_token"], app_token=SECRETS["slack_app_token"]) as slack,
          FakeDiscord(bot_token=SECRETS["discord_token"]) as discord,
          FakeOpenAI(api_key=SECRETS["backend_key"], model="echo") as model):
        yield slack, discord, model


@pytest.fixture(scope="module")
def settings(fakes, private_redis):
    slack, discord, model = fakes
    return Settings(
        slack_bot_token=SecretStr(SECRETS["slack_bot_token"]), slack_app_token=SecretStr(SECRETS["slack_app_token"]),
        slack_signing_secret=SecretStr(SECRETS["slack_signing_secret"]), slack_api_url=slack.api_url,
        discord_token=SecretStr(SECRETS["discord_token"]), discord_api_url=discord.api_base,
        discord_dev_guild_id=discord.guild_id, backend="openai", backend_url=model.base_url,
        backend_key=SecretStr(SECRETS["backend_key"]), backend_model="echo", api_keys=SecretStr(SECRETS["api_keys"]),
        redis_url=private_redis[0], queue_name="privacy", system_prompt=SYSTEM_PROMPT, max_batch=8,
        update_interval_s=0.2, position_interval_s=0.5, per_user_jobs=100, metrics_port=0,
    )


@pytest.fixture(scope="module")
def product(info_log, fakes, settings, private_redis):
    slack, discord, _ = fakes
    redis = private_redis[1]
    worker = WorkerProcess(settings, redis, serve_health=False)
    worker.start()
    try:
        with connected_app(slack, settings, redis), running_bot(discord, settings, redis):
            yield
    finally:
        worker.stop()


# -- sending ---------------------------------------------------------------------------------------------------
def plant_decoys(slack, discord) -> Decoys:
    """A conversation no question is asked in, holding a secret: every question names it."""
    channel = "CDECOY" + uuid.uuid4().hex[:6].upper()
    parent = slack.add_user_message(channel, "UOTHER", "payroll thread")
    slack.add_user_message(channel, "UOTHER", DECOY_SECRET, thread_ts=parent)
    d_channel = discord.add_channel("decoy")
    opener = discord.user_message(d_channel, 4002, "payroll thread")
    d_thread = discord.add_thread(d_channel, "payroll", owner_id=4002, message_id=int(opener["id"]))
    discord.user_message(d_thread, 4002, DECOY_SECRET)
    return Decoys(channel, parent, d_channel, d_thread, int(opener["id"]))


def placeholders(case: dict, decoys: Decoys, marker: str, guild: int) -> dict:
    if case["platform"] == "slack":
        link = f"https://acme.slack.com/archives/{decoys.slack_channel}/p{decoys.slack_thread.replace('.', '')}"
        return {"marker": marker, "other_channel": decoys.slack_channel, "other_thread": decoys.slack_thread,
                "other_user": "UOTHER", "link": link}
    link = f"https://discord.com/channels/{guild}/{decoys.discord_thread}/{decoys.discord_message}"
    return {"marker": marker, "other_channel": decoys.discord_channel, "other_thread": decoys.discord_thread,
            "other_user": 4002, "link": link, "guild": guild}


def send_slack(slack, keys: RedisKeys, case: dict, text: str, marker: str, number: int) -> Sent:
    via, user = case["via"], f"UP{number:03d}"
    if via == "dm":
        channel = "D" + uuid.uuid4().hex[:9].upper()
        event = message(slack, channel, text, user=user, channel_type="im")
        slack.send_event(event)
        return Sent(case, marker, channel, None, keys.job_id("slack", f"{channel}-{event['ts']}"))
    channel = ("G" if via == "private" else "C") + uuid.uuid4().hex[:9].upper()
    parent = slack.add_user_message(channel, user, "our own thread") if via == "thread" else None
    event = mention(slack, channel, text, user=user, thread_ts=parent)
    event["channel_type"] = "group" if via == "private" else "channel"
    slack.send_event(event)
    return Sent(case, marker, channel, parent or event["ts"], keys.job_id("slack", f"{channel}-{event['ts']}"))


def send_discord(discord, keys: RedisKeys, case: dict, text: str, marker: str, number: int) -> Sent:
    via = case["via"]
    if via == "dm":
        user = 6000 + number
        channel = discord.dm_channel(user)
        sent = discord.user_message(channel, user, text)
        return Sent(case, marker, str(channel), None, keys.job_id("discord", f"msg-{sent['id']}"))
    channel = discord.add_channel(f"privacy-{number}")
    if via == "thread":
        thread = discord.add_thread(channel, "our own thread")
        sent = discord.user_message(thread, 4001, text, mentions_bot=True)
        return Sent(case, marker, str(channel), str(thread), keys.job_id("discord", f"msg-{sent['id']}"))
    interaction = discord.slash_command("ask", {"prompt": text, "private": via == "ask-private"}, channel_id=channel)
    return Sent(case, marker, str(channel), None, keys.job_id("discord", f"ask-{interaction['id']}"), interaction)


def job_done(redis: Redis, job_id: str) -> bool:
    try:
        return RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).get_status() in (
            JobStatus.FINISHED, JobStatus.FAILED)
    except NoSuchJobError:
        return False


def job_of(redis: Redis, job_id: str) -> Job:
    return Job.from_json(RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).args[0])


# -- where things went -----------------------------------------------------------------------------------------
def slack_misplaced(slack, sent: list[Sent]) -> list[str]:
    """Slack calls that wrote or read outside the question's own channel and thread (a DM is one place)."""
    places = {item.channel: item for item in sent if item.case["platform"] == "slack"}
    wrong = []
    for call in slack.calls:
        if not call.method.startswith(("chat.", "conversations.", "reactions.")):
            continue
        item = places.get(call.args.get("channel"))
        thread = call.args.get("ts") if call.method == "conversations.replies" else call.args.get("thread_ts")
        threaded = call.method in ("chat.postMessage", "chat.postEphemeral", "conversations.replies")
        if item is None or (threaded and thread != item.thread):
            wrong.append(f"{call.method} channel={call.args.get('channel')} thread={thread}")
    return wrong


def discord_places(discord, sent: list[Sent]) -> tuple[set[str], set[str], set[str]]:
    """The channels/threads/DMs, interaction ids and tokens the questions were asked in."""
    channels = {item.channel for item in sent if item.case["platform"] == "discord"}
    channels |= {str(t["id"]) for t in discord.threads() if str(t.get("parent_id")) in channels}
    asks = [item.interaction for item in sent if item.interaction]
    return channels, {str(i["id"]) for i in asks}, {i["token"] for i in asks}


def discord_misplaced(discord, sent: list[Sent]) -> list[str]:
    channels, interactions, tokens = discord_places(discord, sent)
    wrong = []
    for request in discord.requests:
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["users", "@me"] and parts[2:3] == ["channels"]:
            wrong.append(f"{request.method} {request.path} (opened a DM)")
        elif parts[0] == "channels" and parts[1] not in channels:
            wrong.append(f"{request.method} {request.path}")
        elif parts[0] == "interactions" and parts[1] not in interactions:
            wrong.append(f"{request.method} {request.path}")
        elif parts[0] == "webhooks" and len(parts) > 2 and parts[2] not in tokens:
            wrong.append(f"{request.method} /webhooks/…")
    return wrong


def answers_where_asked(slack, discord, sent: list[Sent]) -> dict[str, str]:
    """Each case's answer (the model repeating its marker), in its own place; private ones only privately."""
    problems = {}
    for item in sent:
        if item.case["platform"] == "slack":
            shown = slack.thread(item.channel, item.thread) if item.thread else slack.messages(item.channel)
            texts = [m["text"] for m in shown if m.get("bot_id") == slack.bot_id]
        elif item.case["via"] == "ask-private":
            msgs = [m for ch in discord_places(discord, [item])[0] for m in discord.messages(ch)]
            if any(item.marker in m["content"] and not (m.get("flags") or 0) & 64 for m in msgs):
                problems[item.case["id"]] = "a private /ask answer is visible to everyone"
            texts = [m["content"] for m in msgs if (m.get("flags") or 0) & 64]
        else:
            channels = [item.thread or item.channel] if item.case["via"] in ("thread", "dm") else [
                t["id"] for t in discord.threads() if str(t.get("parent_id")) == item.channel]
            texts = [m["content"] for ch in channels for m in discord.messages(ch)
                     if int(m["author"]["id"]) == discord.bot_user_id]
        if not any(text.startswith("You said: ") and item.marker in text for text in texts):
            problems[item.case["id"]] = f"no answer in its own place: {texts}"
    return problems


# -- what was stored, rendered and logged ---------------------------------------------------------------------
def redis_dump(redis: Redis, queue_name: str) -> str:
    """Every value of the deployment's keys (RQ's job hashes included: the job ids carry the name)."""
    parts = []
    for key in redis.scan_iter(match=f"*{queue_name}*", count=1000):
        kind = redis.type(key).decode()
        if kind == "string":
            parts.append(redis.get(key))
        elif kind == "hash":
            parts.extend(v for pair in redis.hgetall(key).items() for v in pair)
        elif kind == "list":
            parts.extend(redis.lrange(key, 0, -1))
        elif kind in ("set", "zset"):
            parts.extend(redis.smembers(key) if kind == "set" else redis.zrange(key, 0, -1))
        elif kind == "stream":
            parts.extend(str(entry).encode() for entry in redis.xrange(key))
    return "\n".join(readable(p) for p in parts)


def readable(value) -> str:
    """A stored value as text; RQ keeps a job's arguments zlib-compressed (its hash's ``data`` field)."""
    if not isinstance(value, bytes):
        return str(value)
    try:
        value = zlib.decompress(value)
    except zlib.error:
        pass
    return value.decode("utf-8", "replace")


def rendered_prompts(jobs: list[Job]) -> list[str]:
    """The exact prompt text the worker's own engine renders for each job, in both text templates."""
    return [template.render(job.system_prompt or SYSTEM_PROMPT, conversation_of(job, list(job.attachments)))
            for job in jobs for template in (VICUNA, ALPACA)]


def secret_values() -> list[str]:
    return [*SECRETS.values(), SECRETS["api_keys"].split(":", 1)[1]]


def test_injection_cannot_move_read_or_reveal(product, fakes, settings, private_redis, info_log):
    slack, discord, model = fakes
    redis, keys = private_redis[1], RedisKeys.for_settings(settings)
    decoys = plant_decoys(slack, discord)
    sent = []
    for number, case in enumerate(CASES):
        marker = f"MARK{number:02d}{uuid.uuid4().hex[:8]}"
        text = substitute(case["text"], placeholders(case, decoys, marker, discord.guild_id))
        send = send_slack if case["platform"] == "slack" else send_discord
        sent.append(send(slack if case["platform"] == "slack" else discord, keys, case, text, marker, number))
    slack.wait_for(lambda: all(job_done(redis, item.job_id) for item in sent), timeout=60)
    slack.wait_for(lambda: not answers_where_asked(slack, discord, sent), timeout=10)

    assert slack_misplaced(slack, sent) == []
    assert discord_misplaced(discord, sent) == []
    assert {c.method for c in slack.calls} >= {"conversations.replies", "conversations.history"}  # history was read
    assert discord.requests_to("GET", r"/channels/\d+/messages")

    jobs = [job_of(redis, item.job_id) for item in sent]
    prompts = rendered_prompts(jobs) + [str(r.body["messages"]) for r in model.requests]
    assert all(any(item.marker in p for p in prompts) for item in sent)  # the model saw every question
    stored, sent_texts = redis_dump(redis, settings.queue_name), message_texts(slack, discord)
    assert all(item.marker in stored for item in sent)  # the dump holds the jobs as stored
    for where, text in {"Redis": stored, "prompts": "\n".join(prompts), "messages": sent_texts}.items():
        leaked = [name for name, value in SECRETS.items() if value in text] + (
            ["the decoy's message"] if DECOY_SECRET in text else [])
        assert leaked == [], f"{where} hold {leaked}"
    assert not SLACK_PINGS.search(slack_texts(slack))
    assert all(r.json.get("data", r.json).get("allowed_mentions") == {"parse": []} for r in sends_with_content(discord))

    log = info_log.getvalue()
    assert "worker ready" in log  # the log was captured
    assert [name for name, value in SECRETS.items() if value in log] == []
    assert [item.case["id"] for item in sent if item.case["via"] in PRIVATE_VIAS and item.marker in log] == []


def slack_texts(slack) -> str:
    return "\n".join(str(c.args.get("text") or "") + str(c.args.get("markdown_text") or "")
                     + str(c.args.get("blocks") or "") for c in slack.calls if c.method.startswith("chat."))


def message_texts(slack, discord) -> str:
    return slack_texts(slack) + "\n".join(str(r.json) for r in discord.requests if r.json)
