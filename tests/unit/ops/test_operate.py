"""Operating xwinbot: `xwinbot status` and `requeue-failed` on a real queue, settings checked at start."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from tests.helpers.console_job import question
from worker.cli import main
from worker.errors import RedisUnavailable
from worker.ops.preflight import SettingsProblem, check
from worker.ops.status import publish_worker_info, read_status, render, requeue_failed
from worker.queue.job_queue import JobQueue, QueueLimits
from worker.queue.rq_workers import ThreadedWorkers
from worker.settings import Settings


def test_status_shows_failed_jobs_with_reasons_and_the_workers_model(redis, queue_name, capsys, monkeypatch):
    queue = JobQueue(redis, QueueLimits(retries=0), name=queue_name)
    queue.enqueue(question("will fail: no engine in this process"))
    workers = ThreadedWorkers(redis, queue_name, concurrency=2, heartbeat_s=1, maintenance_interval_s=1)
    workers.start()
    process = None
    try:
        deadline = time.monotonic() + 20
        while read_status(queue).failed < 1 or not workers.worker_names:
            assert time.monotonic() < deadline, "the job never failed"
            time.sleep(0.1)
        process = workers.worker_names[0].rsplit(".", 1)[0]
        publish_worker_info(redis, queue.keys, process, model="TheBloke/Xwin-LM-13B-V0.1-GPTQ", device="cuda",
                            max_batch=32, context_tokens=512)
        status = read_status(queue)
        monkeypatch.setenv("XWINBOT_QUEUE_NAME", queue_name)
        assert main(["status"]) == 0
    finally:
        workers.stop()
        if process:
            redis.hdel(queue.keys.worker_info(), process)
    shown = capsys.readouterr().out
    assert status.failed == 1
    assert status.failed_jobs[0].reason.startswith("RuntimeError: this process has no xwinbot engine")
    assert (f"worker {process}: 0/2 job threads busy — TheBloke/Xwin-LM-13B-V0.1-GPTQ on cuda, 32 conversations × "
            "512 tokens") in render(status, "redis://x")
    assert "0 waiting, 0 being answered" in shown and "1 failed" in shown
    assert "RuntimeError: this process has no xwinbot engine" in shown


def test_requeue_failed_puts_jobs_back(redis, queue_name, capsys, monkeypatch):
    queue = JobQueue(redis, QueueLimits(retries=0), name=queue_name)
    job = question("fails once")
    queue.enqueue(job)
    workers = ThreadedWorkers(redis, queue_name, concurrency=1, heartbeat_s=1, maintenance_interval_s=1)
    workers.start()
    try:
        deadline = time.monotonic() + 20
        while read_status(queue).failed < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        workers.stop()
    monkeypatch.setenv("XWINBOT_QUEUE_NAME", queue_name)
    assert main(["requeue-failed"]) == 0
    assert capsys.readouterr().out.strip() == f"requeued 1 job: {job.job_id}"
    status = read_status(queue)
    assert (status.waiting, status.failed) == (1, 0)
    assert "1 waiting" in render(status, "redis://x") and "workers: none alive" in render(status, "redis://x")
    assert requeue_failed(queue) == []


def test_settings_problems_are_all_named_at_start(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = {
        f"XWINBOT_MODEL={tmp_path}/missing: no such directory": dict(model=str(tmp_path / "missing")),
        "not a model directory (no config.json in it)": dict(model=str(tmp_path / "empty")),
        "neither an existing directory nor a Hub repo id": dict(model="not a repo id"),
    }
    for expected, overrides in cases.items():
        with pytest.raises(SettingsProblem, match=expected.replace("(", r"\(").replace(")", r"\)")):
            check(Settings(**overrides), "worker")
    check(Settings(model="TheBloke/Xwin-LM-13B-V0.1-GPTQ"), "worker")  # a Hub id is fine without a download
    with pytest.raises(RedisUnavailable, match=r"cannot reach Redis at XWINBOT_REDIS_URL=redis://127\.0\.0\.1:1/0"):
        check(Settings(redis_url="redis://127.0.0.1:1/0"), "worker")  # alone and at once: nothing else matters


def test_the_openai_backend_needs_a_url_and_a_model_and_no_model_files():
    with pytest.raises(SettingsProblem) as raised:
        check(Settings(backend="openai", model="not a repo id", device="cuda"), "worker")
    lines = str(raised.value).splitlines()[1:]
    assert len(lines) == 2  # the model and the device are not this worker's business
    assert "needs XWINBOT_BACKEND_URL" in lines[0] and "needs XWINBOT_BACKEND_MODEL" in lines[1]
    with pytest.raises(SettingsProblem, match="not an http"):
        check(Settings(backend="openai", backend_url="vllm:8000", backend_model="m"), "worker")
    check(Settings(backend="openai", backend_url="http://vllm:8000/v1", backend_model="m"), "worker")


def test_adapter_settings_problems(redis):
    with pytest.raises(SettingsProblem) as err:
        check(Settings(slack_bot_token=None), "slack")
    assert "XWINBOT_SLACK_BOT_TOKEN" in str(err.value) and "XWINBOT_SLACK_APP_TOKEN" in str(err.value)
    with pytest.raises(SettingsProblem, match="does not start with xoxb-"):
        check(Settings(slack_bot_token=SecretStr("xapp-oops"), slack_app_token=SecretStr("xapp-1")), "slack")
    with pytest.raises(SettingsProblem, match="HTTP mode needs XWINBOT_SLACK_SIGNING_SECRET"):
        check(Settings(slack_bot_token=SecretStr("xoxb-1"), slack_mode="http"), "slack")
    with pytest.raises(SettingsProblem, match="XWINBOT_DISCORD_TOKEN"):
        check(Settings(discord_token=None), "discord")
    check(Settings(), "up")  # nothing configured: the worker alone, fine


def test_the_cli_says_which_setting_is_wrong(capsys, monkeypatch):
    monkeypatch.setenv("XWINBOT_MAX_BATCH", "lots")
    assert main(["status"]) == 2
    assert "XWINBOT_MAX_BATCH: Input should be a valid integer" in capsys.readouterr().err
    monkeypatch.delenv("XWINBOT_MAX_BATCH")
    monkeypatch.setenv("XWINBOT_SLACK_SUGGESTED_PROMPTS", "Explain this, briefly")  # a JSON list expected
    assert main(["status"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == ('  - XWINBOT_SLACK_SUGGESTED_PROMPTS: not valid JSON '
                                                        '(e.g. ["one", "two"])')
    monkeypatch.delenv("XWINBOT_SLACK_SUGGESTED_PROMPTS")
    monkeypatch.setenv("XWINBOT_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["worker"]) == 2  # one line, as a bad setting
    assert "cannot reach Redis at XWINBOT_REDIS_URL=redis://127.0.0.1:1/0" in capsys.readouterr().err
