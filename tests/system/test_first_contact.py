"""What a newcomer sees first: `xwinbot up` on a fresh machine, and `xwinbot ask` in another terminal at once.

The ask comes while the worker is still building the demo model (an empty model cache): it says what it waits
for, then prints the answer, with no traceback. Ctrl-C while it waits cancels the question; a question with
nothing in it is one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.registry import CanceledJobRegistry

from bot.console import EMPTY_QUESTION, LOADING, NO_WORKER
from tests.helpers.paths import REPO
from tests.helpers.processes import die_with_parent, kill
from tests.helpers.redis_server import free_port
from worker.model.demo_model import DEMO_MODEL_NAME, is_complete
from worker.queue.job_queue import JobQueue

QUESTION = "What is the capital of France?"


def fresh_env(**settings: str) -> dict[str, str]:
    """This environment without any ``XWINBOT_*`` setting of the test runner's (a fresh clone configures
    nothing), plus ``settings``."""
    return {**{key: value for key, value in os.environ.items() if not key.startswith("XWINBOT_")}, **settings}


def xwinbot(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def as_a_terminal_starts_it() -> None:
    """In the child, before exec: Ctrl-C at its default, as in a terminal. A runner started in the background
    (`nohup ... &`) passes SIGINT on ignored, and Python then keeps ignoring it: no KeyboardInterrupt."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, env: dict[str, str], **popen_kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env=env,
                            preexec_fn=as_a_terminal_starts_it, **popen_kwargs)


def wait_for_redis(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            Redis(port=port, socket_connect_timeout=1).ping()
            return
        except RedisConnectionError:
            assert time.monotonic() < deadline, "`xwinbot up` started no Redis"
            time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.long  # ~70 s on 2 cores: ~30 s building the demo model, then loading it and answering
def test_the_first_question_asked_while_up_builds_the_model_is_answered(tmp_path):
    port = free_port()
    env = fresh_env(XDG_CACHE_HOME=str(tmp_path / "cache"),  # no demo model built yet: `up` builds it (~30 s)
                    XWINBOT_REDIS_URL=f"redis://127.0.0.1:{port}/0", XWINBOT_DATA_DIR=str(tmp_path / "data"),
                    XWINBOT_METRICS_PORT="0", XWINBOT_TEMPERATURE="0", XWINBOT_MAX_NEW_TOKENS="40")
    started = time.monotonic()
    up = start("up", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_redis(port)  # `up`'s first step, well under a second; then ask at once
        result = xwinbot("ask", QUESTION, env=env, timeout=300)
        took = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Paris" in result.stdout
        assert LOADING in result.stderr, result.stderr  # it said what it waited for
        assert "Traceback" not in output
        assert is_complete(tmp_path / "cache" / "xwinbot" / "models" / DEMO_MODEL_NAME)
        print(f"answered {took:.1f} s after `up` started; stderr: {result.stderr!r}")
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        kill(up)


def test_ctrl_c_while_waiting_cancels_the_question(redis, queue_name):
    # a queue no worker serves, on the machine's Redis; PYTHONFAULTHANDLER: should the child outlive the Ctrl-C, a
    # SIGABRT makes it print where each of its threads is
    env = fresh_env(XWINBOT_QUEUE_NAME=queue_name, PYTHONFAULTHANDLER="1")
    ask = start("ask", QUESTION, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = ask.stderr.readline()  # no worker serves this queue
        assert NO_WORKER in first_line, first_line
        ask.send_signal(signal.SIGINT)
        try:
            out, err = ask.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            ask.send_signal(signal.SIGABRT)
            out, err = ask.communicate(timeout=10)
            pytest.fail(f"`xwinbot ask` still ran 30 s after Ctrl-C; where its threads were:\n{err}")
    finally:
        kill(ask)
    assert ask.returncode == 130
    assert err.strip() == "xwinbot: cancelled"
    assert "Traceback" not in out + err
    queue = JobQueue(redis, name=queue_name)
    assert queue.depth() == 0
    assert len(CanceledJobRegistry(queue=queue.rq).get_job_ids()) == 1


@pytest.mark.parametrize("question", ["", "  \t ", "\x07\x1b"])
def test_a_question_with_nothing_in_it_is_one_line(question):
    result = xwinbot("ask", question, env=fresh_env(), timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"xwinbot: {EMPTY_QUESTION}\n"
    assert result.stdout == ""
