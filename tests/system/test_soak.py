"""Soak: minutes of mixed questions on Slack, Discord and the console through the real processes, with the faults
the product is built to survive along the way, then a count of what every user saw.

Real parts: a private redis-server (AOF everysec, as ``xwinbot up``, compose and Kubernetes run it, so a
restarted Redis keeps its queue), ``xwinbot worker`` on the offline demo model, ``xwinbot slack`` (Socket Mode to
the fake Slack, which redelivers unacknowledged events as Slack does), ``xwinbot discord`` (discord.py to the fake
Discord; see tests/helpers/soak_discord_adapter.py) and one ``xwinbot ask`` process a console question.

One question every ``EVERY_S`` s, the platforms in turn, every third Slack/Discord question a follow-up in an
answered thread. Faults, at fixed fractions of the run: the Slack adapter stopped (SIGTERM) and started again; the
worker killed with -9 and restarted a second later (a supervisor); Redis stopped and started again; 20 s of
5xx/429 on Slack's Web API (questions keep coming: the Slack adapter keeps them until Slack is back), then on
Discord's REST API; the Slack adapter killed with -9 just after Slack saw an event acknowledged and restarted.

``XWINBOT_SOAK_S`` sets the run's length in seconds (default 480, at most 1200). ``XWINBOT_SOAK_KNOWN_GAPS=1``
also asks on Discord while its REST API is down: the adapter cannot acknowledge a slash command then (Discord
itself tells the user the application did not respond), so such questions are not expected to be answered.
``XWINBOT_SOAK_RECORD=1`` writes the report to benchmarks/results/.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import threading
import time
from collections import Counter

import pytest

from benchmarks.result_json import write_result
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_slack import FakeSlack
from tests.helpers.fault_helpers import rq_status
from tests.helpers.paths import REPO
from tests.helpers.processes import settings_env
from tests.helpers.redis_server import RedisServer
from tests.helpers.slack_helpers import APP_TOKEN, BOT_TOKEN
from tests.helpers.soak import (
    ConsoleQuestions,
    DiscordQuestions,
    Fleet,
    MemoryLog,
    SlackQuestions,
    redis_keys_report,
    verdict,
)
from worker.queue.keys import RedisKeys
from worker.queue.redis_connection import redis_client

pytestmark = [pytest.mark.slow, pytest.mark.long]

SOAK_S = min(float(os.environ.get("XWINBOT_SOAK_S", "480")), 1200.0)
KNOWN_GAPS = os.environ.get("XWINBOT_SOAK_KNOWN_GAPS") == "1"
ASKED_WHILE_DOWN = {"slack", "discord"} if KNOWN_GAPS else {"slack"}  # platforms asked during their API outage
RECORD = os.environ.get("XWINBOT_SOAK_RECORD") == "1"
EVERY_S = 4.0  # the demo model answers one in ~2 s on 2 cores: the queue stays short between faults
EVENT_RETRIES = (2.0, 10.0, 30.0)  # Slack: at once, after 1 and 5 minutes (compressed)
OUTAGE_S = 20.0
REDIS_DOWN_S = 3.0
SETTLE_S = 240.0  # longer than XWINBOT_DELIVERY_RETRY_S' 180 s plus an answer
WARM_UP_S = 60.0  # memory is measured from a process's first minute on (model loaded, first answers given)
GROWTH_LIMIT = 1.5  # no process may grow by half while it runs: a real leak, not the allocator's noise
MEASURED_AT_LEAST_S = 120.0
NO_TTL_LIMIT = 40  # keys that never expire: queues, registries, worker sets; not one per question


class Soak:
    def __init__(self, slack, discord, server: RedisServer, env: dict, tmp_path):
        self.slack_fake, self.discord_fake, self.server = slack, discord, server
        self.redis = redis_client(server.url, retry_s=30)
        keys = RedisKeys(env["XWINBOT_QUEUE_NAME"])
        self.memory = MemoryLog()
        self.fleet = Fleet(env, tmp_path, self.memory, {
            "worker": (["worker"], "worker.cli"), "slack": (["slack"], "worker.cli"),
            "discord": (["discord"], "tests.helpers.soak_discord_adapter")})
        self.platforms = {"slack": SlackQuestions(slack, self.redis, keys),
                          "discord": DiscordQuestions(discord, self.redis, keys),
                          "console": ConsoleQuestions(env, tmp_path)}
        self.asked: list = []
        self.skipped = Counter()  # not asked: the platform's API was down (platforms not in ASKED_WHILE_DOWN)
        self.outages: dict = {}
        self.faults: list[dict] = []
        self.lock = threading.Lock()  # held by the asker while asking; a fault that needs a quiet moment takes it
        self.started = time.monotonic()
        self.redis_starts = 1
        self.memory.watch("redis#1", server.proc.pid)

    # ------------------------------------------------------------------ the processes
    def start_slack(self) -> None:
        self.fleet.start("slack")
        self.slack_fake.wait_connected(timeout=120)

    def start_discord(self) -> None:
        fake, ready = self.discord_fake, self.discord_fake.ready_count
        self.fleet.start("discord")
        fake.wait_for(lambda: fake.ready_count > ready and fake.commands(fake.guild_id), timeout=120)

    def note(self, fault: str, **detail) -> None:
        self.faults.append({"at_s": round(time.monotonic() - self.started, 1), "fault": fault, **detail})
        print(f"[{self.faults[-1]['at_s']:7.1f} s] {fault} {detail or ''}", flush=True)

    # ------------------------------------------------------------------ faults
    def quiet(self, platform: str) -> None:
        """Every question asked on ``platform`` so far is queued (call with the lock held)."""
        mine = [a for a in self.asked if a.platform == platform]
        self.slack_fake.wait_for(lambda: all(rq_status(self.redis, a.job_id) for a in mine), timeout=60)

    def slack_sigterm(self) -> None:
        with self.lock:
            self.quiet("slack")
            status = self.fleet.stop("slack", signal.SIGTERM)
        self.note("Slack adapter SIGTERM", exit=status)
        time.sleep(2)  # questions meanwhile: Slack finds no connection and retries
        self.start_slack()
        self.note("Slack adapter back")

    def slack_kill(self) -> None:
        with self.lock:
            # in the window between the acknowledgement and the enqueue: the inbox keeps the question
            asked = self.platforms["slack"].ask(len(self.asked))
            self.asked.append(asked)
            self.slack_fake.wait_for(lambda: self.platforms["slack"].acked(asked), timeout=30)
            self.fleet.stop("slack", signal.SIGKILL)
        self.note("Slack adapter kill -9", in_ack_window=True)
        time.sleep(1)
        self.start_slack()
        self.note("Slack adapter back")

    def worker_kill(self) -> None:
        self.fleet.stop("worker", signal.SIGKILL)
        self.note("worker kill -9")
        time.sleep(1)  # a supervisor's restart delay
        self.fleet.start("worker")

    def redis_restart(self) -> None:
        self.memory.forget(f"redis#{self.redis_starts}")
        self.server.stop()  # SIGTERM: Redis writes the AOF out and exits
        self.note("Redis stopped")
        time.sleep(REDIS_DOWN_S)
        self.server.start()
        self.redis_starts += 1
        self.memory.watch(f"redis#{self.redis_starts}", self.server.proc.pid)
        self.note("Redis back", keys=self.redis.dbsize())

    def outage(self, platform: str) -> None:
        """The platform's API refuses every call for a while, with an answer of its in flight. No
        question of that platform is still on its way to the queue then, unless it is asked while down
        (``ASKED_WHILE_DOWN``)."""
        fake = self.slack_fake if platform == "slack" else self.discord_fake
        asked_while_down = platform in ASKED_WHILE_DOWN
        with self.lock:
            if not asked_while_down:
                self.quiet(platform)
            self.asked.append(self.platforms[platform].ask(len(self.asked)))
            if not asked_while_down:
                self.quiet(platform)
            self.outages[platform] = fake.outage(OUTAGE_S)
        self.note(f"{platform} API outage", seconds=OUTAGE_S)
        self.outages[platform].wait_until_over()
        self.note(f"{platform} API back", refused=self.outages[platform].refused_total)

    def schedule(self) -> list:
        return [(0.12, self.slack_sigterm), (0.25, self.worker_kill), (0.38, self.redis_restart),
                (0.50, lambda: self.outage("slack")), (0.62, lambda: self.outage("discord")),
                (0.74, self.slack_kill)]

    def chaos(self, errors: list, done: threading.Event) -> None:
        """Runs the faults, then stays until ``done``: the processes it restarted die with the thread that
        started them (``PR_SET_PDEATHSIG`` follows the thread, not the process)."""
        try:
            for fraction, fault in self.schedule():
                time.sleep(max(0.0, self.started + fraction * SOAK_S - time.monotonic()))
                fault()
        except Exception as error:  # noqa: BLE001 - handed to the test's thread, which fails with it
            errors.append(error)
        done.wait()

    # ------------------------------------------------------------------ questions
    def down(self, platform: str) -> bool:
        outage = self.outages.get(platform)
        return outage is not None and outage.started_at <= time.time() < outage.ended_at

    def ask_one(self, n: int) -> None:
        platform = ("slack", "discord", "console")[n % 3]
        questions = self.platforms[platform]
        with self.lock:  # an outage begins with the lock held: checked inside it
            if self.down(platform) and platform not in ASKED_WHILE_DOWN:
                self.skipped[platform] += 1
                return
            first = self.followable(platform) if platform != "console" and (n // 3) % 3 == 2 else None
            asked = questions.follow_up(first) if first else questions.ask(n)
            if first:
                first.followed = True
            self.asked.append(asked)

    def followable(self, platform: str):
        """An answered question of this platform with no follow-up yet, newest first."""
        for asked in reversed(self.asked):
            if asked.platform == platform and not asked.followed and asked.follow_up_of is None:
                if self.outcome(asked)[0] == "once":
                    return asked
        return None

    def outcome(self, asked, console_wait_s: float = 0.0) -> tuple[str, str]:
        if asked.platform == "console":
            if not ConsoleQuestions.done(asked) and console_wait_s <= 0:
                return "waiting", ""
            return ConsoleQuestions.verdict(asked, console_wait_s)
        if rq_status(self.redis, asked.job_id) is None:
            return "lost", "no job"
        return verdict(self.redis, asked.job_id, self.platforms[asked.platform].shown(asked))

    def settle(self) -> float:
        began = time.monotonic()
        while time.monotonic() - began < SETTLE_S:
            if all(self.outcome(a)[0] == "once" for a in self.asked):
                break
            time.sleep(2)
        time.sleep(3)  # a late second copy would show up now
        return time.monotonic() - began

    def report(self, settled_s: float) -> dict:
        outcomes = {id(a): self.outcome(a, console_wait_s=5) for a in self.asked}
        per_platform = {}
        for platform in self.platforms:
            mine = [a for a in self.asked if a.platform == platform]
            counts = Counter(outcomes[id(a)][0] for a in mine)
            per_platform[platform] = dict(
                asked=len(mine), follow_ups=sum(a.follow_up_of is not None for a in mine),
                answered_once=counts["once"], lost=counts["lost"], duplicated=counts["duplicated"],
                not_asked_during_outage=self.skipped[platform],
                problems=[f"{a.job_id or a.prompt}: {outcomes[id(a)][1]}" for a in mine
                          if outcomes[id(a)][0] != "once"])
        return dict(soak_s=SOAK_S, every_s=EVERY_S, known_gaps=KNOWN_GAPS, settled_s=round(settled_s, 1),
                    platforms=per_platform, faults=self.faults, memory=self.memory.report(WARM_UP_S),
                    redis=redis_keys_report(self.redis, self.fleet.env["XWINBOT_QUEUE_NAME"]),
                    processes_alive=self.fleet.alive(), tracebacks_in_logs=self.fleet.tracebacks())


def test_soak_mixed_questions_through_faults(demo_dir, tmp_path):
    queue_name = f"soak-{int(time.time())}"
    with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN, event_retries=EVENT_RETRIES) as slack, \
            FakeDiscord() as discord, RedisServer(tmp_path / "redis") as server:
        env = {**settings_env(
            model=demo_dir, device="cpu", temperature=0.0, max_new_tokens=40, max_context_tokens=1024, max_batch=4,
            heartbeat_s=2, maintenance_interval_s=3, update_interval_s=0.5, position_interval_s=1.0, metrics_port=0,
            per_user_jobs=10, queue_name=queue_name, redis_url=server.url, slack_bot_token=BOT_TOKEN,
            slack_app_token=APP_TOKEN, slack_api_url=slack.api_url, discord_token=discord.bot_token,
            discord_api_url=discord.api_base, discord_dev_guild_id=discord.guild_id),
            "SOAK_DISCORD_GATEWAY": discord.gateway_url}
        soak = Soak(slack, discord, server, env, tmp_path)
        done = threading.Event()
        with soak.memory:
            try:
                soak.fleet.start("worker")
                soak.start_slack()
                soak.start_discord()
                soak.started = time.monotonic()
                errors: list = []
                chaos = threading.Thread(target=soak.chaos, args=(errors, done), daemon=True)
                chaos.start()
                n = 0
                while time.monotonic() - soak.started < SOAK_S:
                    soak.ask_one(n)
                    n += 1
                    time.sleep(max(0.0, soak.started + n * EVERY_S - time.monotonic()))
                assert not errors, errors
                report = soak.report(soak.settle())
                assert not errors, errors
            finally:
                soak.fleet.stop_all()
                done.set()
    print("\n" + json.dumps(report, indent=1))
    if RECORD:
        day = datetime.date.today().isoformat()
        write_result(f"{day}-cpu-soak-{round(SOAK_S / 60)}min", report, out=REPO / "benchmarks" / "results")
    check(report)


def check(report: dict) -> None:
    for platform, counts in report["platforms"].items():
        assert counts["lost"] == 0 and counts["duplicated"] == 0, (platform, counts)
        assert counts["answered_once"] == counts["asked"] > 0
    assert all(report["processes_alive"].values()), report["processes_alive"]
    registries = report["redis"]["registries"]
    assert registries["queued"] == registries["started"] == registries["failed"] == 0, registries
    assert sum(report["redis"]["without_ttl"].values()) <= NO_TTL_LIMIT, report["redis"]["without_ttl"]
    for label, memory in report["memory"].items():
        if memory["measured_s"] >= MEASURED_AT_LEAST_S:
            assert memory["rss_end_mb"] <= GROWTH_LIMIT * memory["rss_warm_mb"], (label, memory)
