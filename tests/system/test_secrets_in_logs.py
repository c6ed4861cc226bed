"""A whole run logged at DEBUG — worker, Slack and Discord adapters, one question each — never shows a secret,
and the lines logged while answering carry the job's id. Marked slow (loads the demo model)."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from pydantic import SecretStr
from rq.job import Job as RQJob
from rq.job import JobStatus

from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.discord_helpers import running_bot
from tests.helpers.log_capture import product_log
from tests.helpers.redis_server import drop_queue
from tests.helpers.slack_helpers import connected_app, mention
from worker.queue.job_queue import SERIALIZER
from worker.queue.keys import RedisKeys
from worker.serve import WorkerProcess
from worker.settings import Settings

pytestmark = pytest.mark.slow
SLACK_BOT = "xoxb-1111111111-2222222222-SecretSlackBotToken42"
SLACK_APP = "xapp-1-A0001-3333333333-SecretSlackAppToken42"
SIGNING = "SecretSigningSecret42"
DISCORD = "MTAwMDAwMDAwMDAwMDAwMDAw.GsEcRt.SecretDiscordTokenxxxxxxxxxxxxxxxx42"


@pytest.fixture
def debug_log(tmp_path):
    path = tmp_path / "xwinbot.log"
    with path.open("w") as stream, product_log(stream, "DEBUG", "json"):
        yield path


def done(redis, job_id) -> bool:
    try:
        return RQJob.fetch(job_id, connection=redis, serializer=SERIALIZER).get_status() == JobStatus.FINISHED
    except Exception:
        return False


def test_a_debug_log_of_a_whole_run_holds_no_secret(redis, demo_dir, debug_log):
    queue_name = f"secrets-{uuid.uuid4().hex[:10]}"
    with FakeSlack(bot_token=SLACK_BOT, app_token=SLACK_APP) as slack, FakeDiscord(bot_token=DISCORD) as discord:
        settings = Settings(
            model=str(demo_dir), device="cpu", temperature=0.0, max_new_tokens=24, max_context_tokens=512,
            queue_name=queue_name, update_interval_s=0.3, metrics_port=0,
            slack_bot_token=SecretStr(SLACK_BOT), slack_app_token=SecretStr(SLACK_APP),
            slack_signing_secret=SecretStr(SIGNING), slack_api_url=slack.api_url,
            discord_token=SecretStr(DISCORD), discord_api_url=discord.api_base, discord_dev_guild_id=discord.guild_id,
        )
        logging.getLogger("xwinbot.test").info("settings: %r", settings)  # a careless operator's debug line
        worker = WorkerProcess(settings, redis)
        worker.start()
        try:
            with connected_app(slack, settings, redis), running_bot(discord, settings, redis):
                channel = f"C{uuid.uuid4().hex[:8].upper()}"
                event = mention(slack, channel, "What is the capital of France?")
                slack.send_event(event)
                interaction = discord.slash_command("ask", {"prompt": "What is the capital of France?"})
                keys = RedisKeys.for_settings(settings)
                slack_job = keys.job_id("slack", f"{channel}-{event['ts']}")
                discord_job = keys.job_id("discord", f"ask-{interaction['id']}")
                slack.wait_for(lambda: done(redis, slack_job) and done(redis, discord_job), timeout=90)
        finally:
            worker.stop()
            drop_queue(redis, queue_name)
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = debug_log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) > 50  # a real DEBUG log of the run
    for secret in (SLACK_BOT, SLACK_APP, SIGNING, DISCORD, "SecretSlackBotToken42", "SecretDiscordToken"):
        assert secret not in text, f"a secret leaked into the log: {secret[:12]}…"
    job_ids = {line["job_id"] for line in lines}
    assert slack_job in job_ids and discord_job in job_ids  # lines logged while answering carry the job id
