"""The rendering corpus (tests/data/rendering_corpus.yaml) through the real Slack and Discord posters to the fakes:
streamed piece by piece, then finished. What a person sees must be the Markdown the model wrote (tables as aligned
code blocks), every message must render on its own (code blocks closed, links whole), and nothing may ping."""

from __future__ import annotations

import re
import time

import pytest
import yaml

from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.paths import TEST_DATA
from tests.helpers.slack_helpers import BOT_TOKEN, unique
from worker.posters.discord import DiscordPoster
from worker.posters.discord_controls import NO_PINGS
from worker.posters.discord_rest import DiscordRest
from worker.posters.slack import SlackPoster, slack_client
from worker.posters.slack_text import WORD_JOINER
from worker.queue.job import Job, JobTurn, ReplyTarget, Requester
from worker.queue.keys import RedisKeys

CORPUS = yaml.safe_load((TEST_DATA / "rendering_corpus.yaml").read_text(encoding="utf-8"))
SLACK_PING = re.compile(r"(<|&lt;|&#0*60;|&#x0*3c;)[!@]|(?<![\w\u2060])@(everyone|here|channel)\b", re.IGNORECASE)
FENCE_LINE = re.compile(r"^\s*```", re.MULTILINE)
LINK_START = re.compile(r"\[[^\[\]\n]*\]\(")
LINK = re.compile(r"\[[^\[\]\n]*\]\((?:[^()\s]|\([^()\s]*\))*\)")
TABLE_DELIMITER = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*\|", re.MULTILINE)
STREAMED_EDITS = 25


def expected(case: dict, platform: str) -> str | None:
    value = case.get(platform)
    if value == "same":
        return case["answer"]
    return None if value is None else value.replace("{WJ}", WORD_JOINER)


def pieces(answer: str) -> list[str]:
    """The answer as a streamed poster sees it: growing prefixes, some of them ending inside links or code."""
    ends = set(range(1, len(answer), max(1, len(answer) // STREAMED_EDITS)))
    ends |= {m.start() + 5 for m in LINK_START.finditer(answer)} | {answer.find("`") + 3}
    return [answer[:end] for end in sorted(e for e in ends if 0 < e < len(answer))]


def outside_code(text: str) -> str:
    """``text`` with its fenced code blocks taken out (an unclosed one runs to the end)."""
    return re.sub(r"^\s*```.*?(^\s*```|\Z)", "", text, flags=re.MULTILINE | re.DOTALL)


def renders_on_its_own(text: str) -> list[str]:
    """What is wrong with one message as a person would see it (empty when nothing)."""
    problems = []
    if len(FENCE_LINE.findall(text)) % 2:
        problems.append("a code block is not closed")
    prose = outside_code(text)
    if len(LINK_START.findall(prose)) != len(LINK.findall(prose)):
        problems.append("a link is cut")
    if TABLE_DELIMITER.search(prose):
        problems.append("a table is shown as raw pipes")
    return problems


def test_the_corpus_is_well_formed():
    ids = [case["id"] for case in CORPUS]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    for case in CORPUS:
        assert case.get("limit") or (case.get("slack") and case.get("discord")), case["id"]
    everything = "\n".join(case["answer"] for case in CORPUS)
    for needed in ("# ", "  - ", "](http", "**", "~~", "```python", "> ", "|---", "@everyone", "<!channel>", "<@U",
                   "<!subteam^", "<@&", "@here", "🎉"):
        assert needed in everything, needed


# -- Slack -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slack():
    with FakeSlack(bot_token=BOT_TOKEN) as server:
        yield server


def slack_job(fake: FakeSlack) -> Job:
    channel = unique("C")
    question_ts = fake.add_user_message(channel, "U1", "<@UBOT> a question")
    placeholder = slack_client(BOT_TOKEN, fake.api_url).chat_postMessage(
        channel=channel, thread_ts=question_ts, text="_thinking…_")["ts"]
    return Job(job_id=unique("slack-"), turns=[JobTurn(role="user", text="a question")],
               requester=Requester(platform="slack", user_id="U1"),
               reply_to=ReplyTarget(platform="slack", channel_id=channel, thread_id=question_ts,
                                    placeholder_id=placeholder))


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_slack_shows_the_markdown_and_pings_no_one(case, slack, redis):
    job = slack_job(slack)
    poster = SlackPoster(slack_client(BOT_TOKEN, slack.api_url), redis, RedisKeys(), limit=case.get("limit", 12_000))
    poster.waiting(job, 2)
    for piece in pieces(case["answer"]):
        poster.update(job, piece)
    poster.finish(job, case["answer"])
    channel = job.reply_to.channel_id
    messages = [m for m in slack.thread(channel, job.reply_to.thread_id) if m.get("bot_id")]
    final = [slack.shown(channel, m["ts"]) for m in messages]
    for text in [t for m in messages for t in slack.history_of(channel, m["ts"])][1:]:  # after the placeholder
        assert not SLACK_PING.search(text), text
        assert not renders_on_its_own(text), (renders_on_its_own(text), text)
    written = [c.args for c in slack.calls_to("chat.update") + slack.calls_to("chat.postMessage")
               if c.args.get("channel") == channel and c.args.get("blocks")]
    answers = [args for args in written if any(block["type"] == "markdown" for block in args["blocks"])]
    assert answers and not any("markdown_text" in args for args in answers)  # markdown blocks, buttons beside
    assert not any(SLACK_PING.search(args["text"]) for args in written)  # nor does a notification's text ping
    if expected(case, "slack") is not None:
        assert final == [expected(case, "slack")]
    if case.get("limit"):
        assert len(final) > 1 and all(len(text) <= case["limit"] for text in final)
    for needed in case.get("contains", []):
        assert any(needed in text.replace(WORD_JOINER, "") for text in final), needed


# -- Discord ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def discord():
    with FakeDiscord() as server:
        yield server


def discord_job(fake: FakeDiscord) -> Job:
    rest = DiscordRest(fake.bot_token, fake.api_base)
    question = fake.user_message(fake.channel_id, 4001, "a question", mentions_bot=True)
    thread = fake.add_thread(fake.channel_id, "a question", owner_id=fake.bot_user_id, message_id=int(question["id"]))
    placeholder = rest.send(str(thread), {"content": "thinking…", "allowed_mentions": NO_PINGS})
    return Job(job_id=f"discord-corpus-{time.time_ns()}", turns=[JobTurn(role="user", text="a question")],
               requester=Requester(platform="discord", user_id="4001"),
               reply_to=ReplyTarget(platform="discord", channel_id=str(thread), thread_id=str(thread),
                                    placeholder_id=placeholder["id"]))


@pytest.mark.parametrize("case", CORPUS, ids=[case["id"] for case in CORPUS])
def test_discord_shows_the_markdown_and_pings_no_one(case, discord, redis):
    job = discord_job(discord)
    thread = job.reply_to.thread_id
    poster = DiscordPoster(DiscordRest(discord.bot_token, discord.api_base), redis, RedisKeys(),
                           limit=case.get("limit", 2000))
    before = len(discord.requests)
    for piece in pieces(case["answer"]):
        poster.update(job, piece)
    poster.finish(job, case["answer"])
    messages = [m for m in discord.messages(thread) if int(m["author"]["id"]) == discord.bot_user_id]
    final = [m["content"] for m in messages]
    for text in [t for m in messages for t in discord.history_of(thread, m["id"])][1:]:
        assert not renders_on_its_own(text), (renders_on_its_own(text), text)
    writes = [r for r in discord.requests[before:] if r.method in ("POST", "PATCH") and "/messages" in r.path]
    assert writes and all(r.json.get("allowed_mentions") == {"parse": []} for r in writes)
    assert not any(m.get("mention_everyone") or m.get("mentions") or m.get("mention_roles") for m in messages)
    if expected(case, "discord") is not None:
        assert final == [expected(case, "discord")]
    if case.get("limit"):
        assert len(final) > 1 and all(len(text) <= case["limit"] for text in final)
    for needed in case.get("contains", []):
        assert any(needed in text for text in final), needed
