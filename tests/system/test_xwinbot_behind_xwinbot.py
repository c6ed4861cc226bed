"""One xwinbot as another's backend, end to end and all real: a Slack mention (fake Slack → our bolt app → queue A)
is answered by worker A with XWINBOT_BACKEND=openai, which streams from deployment B's `xwinbot api` (→ queue B →
worker B on the demo model) — what a team does when its GPUs sit behind another deployment or a vLLM. B runs as
its own processes (`xwinbot worker`, `xwinbot api`), as it would on another machine."""

from __future__ import annotations

import time
import urllib.request

import pytest
from pydantic import SecretStr

from tests.fakes.fake_slack import FakeSlack
from tests.helpers.processes import running, settings_env
from tests.helpers.redis_server import drop_queue, free_port
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN, connected_app, mention, slack_settings, unique
from tests.system.test_slack_e2e import answer_of
from worker.queue.keys import RedisKeys
from worker.serve import WorkerProcess

pytestmark = pytest.mark.slow
KEY = "sk-team-a-to-b"


def wait_healthy(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.5)


def test_a_slack_question_is_answered_through_a_second_xwinbot(redis, demo_dir, tmp_path):
    name_a, name_b = unique("front-").lower(), unique("gpu-").lower()
    port = free_port()
    b_env = settings_env(queue_name=name_b, model=demo_dir, device="cpu", temperature=0.0, max_new_tokens=40,
                         max_context_tokens=1024, max_batch=2, api_keys=f"team-a:{KEY}", api_port=port,
                         metrics_port=0)
    log = open(tmp_path / "b.log", "w")
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as slack, \
            running(["worker"], b_env, stdout=log, stderr=log), running(["api"], b_env, stdout=log, stderr=log):
        front = slack_settings(slack, name_a, backend="openai", backend_url=f"http://127.0.0.1:{port}/v1",
                               backend_key=SecretStr(KEY), backend_model="xwinbot", backend_timeout_s=60.0,
                               max_batch=2, update_interval_s=0.3, metrics_port=0)
        wait_healthy(f"http://127.0.0.1:{port}/healthz")
        worker_a = WorkerProcess(front, redis, serve_health=False)
        worker_a.start()
        try:
            with connected_app(slack, front, redis):
                event = mention(slack, unique("C"), "What is the capital of France?")
                slack.send_event(event)
                reply = answer_of(slack, redis, RedisKeys.for_settings(front), event["channel"], event["ts"],
                                  timeout=180)
        finally:
            worker_a.stop()
            drop_queue(redis, name_a)
            drop_queue(redis, name_b)
    assert "Paris" in reply.get("text", "") + reply.get("markdown_text", ""), reply
    assert "Traceback" not in (tmp_path / "b.log").read_text()
