"""Every process against a locked-down Redis: TLS on loopback (a throwaway CA), ACL users from
deploy/redis/users.acl (``adapter`` for the adapters and the console, ``worker`` for the worker, with a client
certificate: mutual TLS), and what happens when the password, the user or TLS is wrong: one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from redis.exceptions import NoPermissionError, ResponseError

from bot.discord.client import create_bot
from tests.fakes.fake_discord import ClientThread, FakeDiscord
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.fault_helpers import DiscordSide, SlackSide, both_platforms_settings, finished
from tests.helpers.paths import REPO
from tests.helpers.processes import kill, settings_env, spawn
from tests.helpers.redis_server import RedisServer, free_port, tls_files
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import redis_from_settings

pytestmark = pytest.mark.slow
PASSWORDS = {"adapter": "adapter-S3cret-pw", "worker": "worker-S3cret-pw"}
ADMIN_PASSWORD = "admin-S3cret-pw"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """redis-server with TLS only and the shipped ACL file, rendered with this test's passwords."""
    root = tmp_path_factory.mktemp("secured-redis")
    acl = (REPO / "deploy/redis/users.acl").read_text()
    for user, password in PASSWORDS.items():
        acl = acl.replace(f"@{user.upper()}_PASSWORD@", password)
    (root / "users.acl").write_text(acl)
    with RedisServer(root / "data", password=ADMIN_PASSWORD, acl_file=root / "users.acl",
                     tls=tls_files(root / "tls")) as server:
        yield server


def tls_env(server: RedisServer, user: str | None, password: str | None, client_cert: bool = False) -> dict:
    env = {"XWINBOT_REDIS_URL": server.url_for(user, password), "XWINBOT_REDIS_CA_FILE": str(server.tls.ca),
           "XWINBOT_METRICS_PORT": "0"}
    if client_cert:
        env |= {"XWINBOT_REDIS_CERT_FILE": str(server.tls.client_cert),
                "XWINBOT_REDIS_KEY_FILE": str(server.tls.client_key)}
    return env


def xwinbot(command: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *command], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [["worker"], ["slack"], ["discord"], ["api"], ["ask", "hi"], ["status"], ["up"]])
def test_a_wrong_password_stops_every_process_with_one_line_and_exit_2(secured, command):
    result = xwinbot(command, tls_env(secured, "adapter", "not-the-password"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f'xwinbot {command[0]}: Redis at 127.0.0.1:{secured.port} refused the '
                                          'password for user "adapter" (check XWINBOT_REDIS_URL)']
    assert "not-the-password" not in result.stdout + result.stderr


def test_an_unknown_user_no_ca_and_no_redis_are_each_one_line(secured):
    cases = {
        'refused the password for user "nobody"': tls_env(secured, "nobody", "x"),
        "TLS with Redis at": {**tls_env(secured, "adapter", PASSWORDS["adapter"]), "XWINBOT_REDIS_CA_FILE": ""},
        "cannot reach Redis at XWINBOT_REDIS_URL=redis://adapter:***@127.0.0.1:":
            {"XWINBOT_REDIS_URL": f"redis://adapter:{PASSWORDS['adapter']}@127.0.0.1:{free_port()}/0"},
    }
    for expected, env in cases.items():
        result = xwinbot(["status"], env)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert PASSWORDS["adapter"] not in result.stderr


def test_the_adapter_user_is_refused_what_it_must_not_do(secured):
    secured.client().set("other-app:secret", "x")
    adapter = secured.client(username="adapter", password=PASSWORDS["adapter"])
    for forbidden in (adapter.flushall, lambda: adapter.config_get("*"), lambda: adapter.keys("*"),
                      lambda: adapter.get("other-app:secret"), adapter.acl_list, adapter.client_list):
        with pytest.raises((NoPermissionError, ResponseError), match="(?i)permission|NOPERM"):
            forbidden()
    with pytest.raises(Exception, match="(?i)WRONGPASS|invalid|disabled"):
        secured.client(username="default", password="").ping()  # the default user is off
    assert secured.client().get("other-app:secret") == b"x"


def test_every_process_answers_through_tls_and_its_own_acl_user(secured, demo_dir, tmp_path):
    """The worker (user worker, client certificate) answers `xwinbot ask`, `xwinbot slack`, the Discord bot and
    `xwinbot api`, each with the adapter user, all over TLS with the CA."""
    adapter_env = tls_env(secured, "adapter", PASSWORDS["adapter"])
    admin = secured.client()
    admin.acl_log_reset()  # the refusals the test before provoked on purpose
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as slack_fake, FakeDiscord() as discord_fake:
        settings = both_platforms_settings(slack_fake, discord_fake, "xwinbot", demo_dir, max_new_tokens=12,
                                           **{k[8:].lower(): v for k, v in adapter_env.items()})
        base = {k: v for k, v in settings_env(**settings.model_dump(exclude_none=True)).items()
                if not k.startswith("XWINBOT_SLACK_ALLOWED") and not k.startswith("XWINBOT_DISCORD_ALLOWED")}
        api_port = free_port()
        worker_log = open(tmp_path / "worker.log", "w")
        processes = [spawn(["worker"], {**base, **tls_env(secured, "worker", PASSWORDS["worker"], client_cert=True)},
                           stdout=worker_log, stderr=subprocess.STDOUT)]
        try:
            processes.append(spawn(["slack"], base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            api_log = open(tmp_path / "api.log", "w")
            processes.append(spawn(["api"], {**base, "XWINBOT_API_KEYS": "ci:sk-test", "XWINBOT_API_PORT": api_port},
                                   stdout=api_log, stderr=subprocess.STDOUT))
            asked = xwinbot(["ask", "What is the capital of France?"], base, timeout=180)
            assert asked.returncode == 0, asked.stderr + (tmp_path / "worker.log").read_text()[-2000:]
            assert "Paris" in asked.stdout

            keys = RedisKeys.for_settings(settings)
            slack_fake.wait_connected(timeout=60)
            slack = SlackSide(slack_fake, admin, keys)
            slack_job = slack.ask("What is the capital of France?")
            slack_fake.wait_for(lambda: finished(admin, slack_job), timeout=120)
            assert any("Paris" in text for text in slack.visible(slack_job))

            with discord_fake.patch_discord_py():
                bot = ClientThread(lambda: create_bot(settings, redis_from_settings(settings), guild_ready_timeout=0.1),
                                   discord_fake.bot_token).start()
                try:
                    discord = DiscordSide(discord_fake, admin, keys)
                    discord_job = discord.ask("What is the capital of France?")
                    discord_fake.wait_for(lambda: finished(admin, discord_job), timeout=120)
                finally:
                    bot.stop()
            assert admin.hget(f"rq:job:{discord_job}", "status") == b"finished"

            request = urllib.request.Request(
                f"http://127.0.0.1:{api_port}/v1/chat/completions", method="POST",
                data=json.dumps({"model": "xwinbot", "messages": [{"role": "user", "content": "Capital of France?"}]}
                                ).encode(),
                headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"})
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        answer = json.load(response)["choices"][0]["message"]["content"]
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline
                    time.sleep(0.3)
                except urllib.error.URLError as err:
                    assert isinstance(err.reason, ConnectionRefusedError) and time.monotonic() < deadline, \
                        (tmp_path / "api.log").read_text()[-3000:]
                    time.sleep(0.3)
            assert answer.strip()
        finally:
            for process in processes:
                kill(process)
    log = (tmp_path / "worker.log").read_text()
    assert PASSWORDS["worker"] not in log and "NOPERM" not in log
    assert [(e["username"], e["object"]) for e in admin.acl_log()] == [], "a command the ACL file does not grant"


def test_up_starts_its_own_redis_with_the_password_of_the_url(tmp_path):
    from redis import Redis
    from redis.exceptions import AuthenticationError

    from worker.settings import Settings
    from worker.up import local_redis_needed, start_local_redis

    port = free_port()
    settings = Settings(redis_url=f"redis://:pw-{port}@127.0.0.1:{port}/0", metrics_port=0)
    assert local_redis_needed(settings)
    process = start_local_redis(settings, tmp_path / "redis")
    try:
        assert f"pw-{port}" not in " ".join(open(f"/proc/{process.pid}/cmdline").read().split("\0"))  # not in ps
        assert Redis(port=port, password=f"pw-{port}").ping()
        with pytest.raises(AuthenticationError):
            Redis(port=port).ping()  # no password: refused
        assert not local_redis_needed(settings)
    finally:
        process.terminate()
        process.wait(10)
